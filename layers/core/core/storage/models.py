"""PynamoDB models: one class per table of template.yaml. docs/data-model.md explains the keys,
the indexes and which component's query uses each.

Table names are bound at cold start by `bind_tables(settings)`; the names here are placeholders."""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from pynamodb.attributes import (
    BooleanAttribute,
    ListAttribute,
    MapAttribute,
    NumberAttribute,
    UnicodeAttribute,
    UnicodeSetAttribute,
)
from pynamodb.connection import Connection, TableConnection
from pynamodb.exceptions import DeleteError, PynamoDBException, UpdateError
from pynamodb.expressions.condition import Condition
from pynamodb.expressions.update import Action
from pynamodb.indexes import AllProjection, GlobalSecondaryIndex, IncludeProjection
from pynamodb.models import Model

from core.clock import backoff
from core.settings import Settings

# PynamoDB gives each model's connection its own botocore session per thread, and each session parses
# the DynamoDB service model again: ten tables cost a cold start ~10 parses (~0.1-0.3 s each). One
# per-thread holder shared by every model's connection means one session, one parse, per thread.
_SESSIONS_BY_THREAD = threading.local()


class _Base(Model):
    class Meta:
        table_name = "unbound"
        max_retry_attempts = 5

    @classmethod
    def _get_connection(cls) -> TableConnection:
        fresh = cls._connection is None or cls._connection.table_name != cls.Meta.table_name
        connection = super()._get_connection()
        if fresh:
            connection.connection._local = _SESSIONS_BY_THREAD
        return connection


class UserModel(_Base):
    """A tenant. `remaining_quota` is only ever changed by conditional updates."""

    class Meta(_Base.Meta):
        table_name = "UsersTable"

    user_id = UnicodeAttribute(hash_key=True)
    email = UnicodeAttribute()
    quota = NumberAttribute()
    remaining_quota = NumberAttribute()
    service_ids = ListAttribute[Any](of=UnicodeAttribute, default=list)
    created_at = NumberAttribute()
    # Sender creations in the current rate window (each one makes SES mail a verification link).
    sender_window = NumberAttribute(null=True)
    senders_in_window = NumberAttribute(null=True)
    # Test sends in the current hour, and the last one's time (core.api.rate_limits.take_test_send).
    test_send_window = NumberAttribute(null=True)
    test_sends_in_window = NumberAttribute(null=True)
    last_test_send_at = NumberAttribute(null=True)
    # Reputation guard (core.deliverability.reputation): set while the tenant's sending is held
    # because its bounce or complaint rate crossed a threshold; only an admin clears it.
    sending_hold = UnicodeAttribute(null=True)
    sending_hold_at = NumberAttribute(null=True)
    # Weighted fairness (core.dispatch.fairness): picks per round on every service it shares; null = 1.
    weight = NumberAttribute(null=True)


class ContactModel(_Base):
    class Meta(_Base.Meta):
        table_name = "ContactsTable"

    user_id = UnicodeAttribute(hash_key=True)
    contact_id = UnicodeAttribute(range_key=True)
    email = UnicodeAttribute()
    name = UnicodeAttribute(null=True)
    tags = ListAttribute[Any](of=UnicodeAttribute, default=list)
    attributes = MapAttribute[str, Any](default=dict)
    timezone = UnicodeAttribute(null=True)
    # subscribed | unsubscribed | bounced | complained
    status = UnicodeAttribute(default="subscribed")
    created_at = NumberAttribute()
    updated_at = NumberAttribute()
    # Transient SES bounces of mail to this contact (core.deliverability.event_effects): recorded,
    # not suppressed (a permanent bounce suppresses).
    soft_bounces = NumberAttribute(null=True)
    last_soft_bounce_at = NumberAttribute(null=True)


class TemplateModel(_Base):
    class Meta(_Base.Meta):
        table_name = "TemplatesTable"

    user_id = UnicodeAttribute(hash_key=True)
    template_id = UnicodeAttribute(range_key=True)
    name = UnicodeAttribute()
    subject = UnicodeAttribute()
    html = UnicodeAttribute()
    text = UnicodeAttribute(null=True)
    created_at = NumberAttribute()


class SenderModel(_Base):
    class Meta(_Base.Meta):
        table_name = "SendersTable"

    user_id = UnicodeAttribute(hash_key=True)
    sender_id = UnicodeAttribute(range_key=True)
    email = UnicodeAttribute()
    name = UnicodeAttribute()
    created_at = NumberAttribute()


class SenderIdentityModel(_Base):
    """Who owns a sending identity: `address:<email>` or `domain:<domain>` -> one tenant. Written
    only by conditional puts, so two tenants can never both hold the same address or domain."""

    class Meta(_Base.Meta):
        table_name = "SenderIdentitiesTable"

    identity = UnicodeAttribute(hash_key=True)
    user_id = UnicodeAttribute()
    created_at = NumberAttribute()


class EmailServiceModel(_Base):
    """A sending account. Usage per UTC day lives in ServiceUsageModel, one item per day."""

    class Meta(_Base.Meta):
        table_name = "ServicesTable"

    service_id = UnicodeAttribute(hash_key=True)
    name = UnicodeAttribute()
    region = UnicodeAttribute()
    sending_rate = NumberAttribute()  # minimum seconds between two sends; float > 0
    daily_quota = NumberAttribute()
    from_domain = UnicodeAttribute(null=True)
    configuration_set = UnicodeAttribute(null=True)
    enabled = BooleanAttribute(default=True)
    is_healthy = BooleanAttribute(default=True)
    health_reason = UnicodeAttribute(null=True)
    last_health_check = NumberAttribute(null=True)
    # What the last health check read of the SES account (core.service_health).
    health_source = UnicodeAttribute(null=True)  # "sesv2:GetAccount" or "ses:GetSendQuota" (fallback)
    account_sending_enabled = BooleanAttribute(null=True)
    account_enforcement_status = UnicodeAttribute(null=True)  # HEALTHY | PROBATION | SHUTDOWN
    account_max_24_hour_send = NumberAttribute(null=True)
    account_max_send_rate = NumberAttribute(null=True)  # emails per second
    account_sent_last_24_hours = NumberAttribute(null=True)
    health_warnings = ListAttribute[Any](of=UnicodeAttribute, null=True)  # e.g. rate above the account's
    last_sent = NumberAttribute(null=True)
    # Reputation guard (core.deliverability.reputation): set while the service is held because its
    # bounce or complaint rate crossed a threshold; it cannot send until an admin clears it.
    sending_hold = UnicodeAttribute(null=True)
    sending_hold_at = NumberAttribute(null=True)
    # --- recipient-domain throttles (core.dispatch.domain_throttles) ---
    # group (a mailbox provider of core.mail.providers, or a domain) -> {"per_minute": n, "per_hour": n}
    domain_limits = MapAttribute[str, Any](null=True)
    interleave_domains = BooleanAttribute(null=True)  # null = true: no provider gets two sends in a row
    # group -> {"level": k, "since": t, "until": t}: SES DeliveryDelay replies tightened that group
    # (core.deliverability.deferrals); the limit is divided by 2**level until `until`.
    domain_deferrals = MapAttribute[str, Any](null=True)
    # --- warm-up ramp (core.dispatch.warmup) ---
    # {"preset", "first_day", "growth", "schedule": [n, ...], "start_day": "YYYY-MM-DD"}
    warmup = MapAttribute[str, Any](null=True)
    created_at = NumberAttribute()


class ServiceUsageModel(_Base):
    """Emails a service has reserved on one UTC day (`day` = YYYY-MM-DD), capped by a conditional ADD.
    The same table holds a service's sent counters per minute (`day` = YYYY-MM-DDTHH:MM, `sent`):
    core.dispatch.rates."""

    class Meta(_Base.Meta):
        table_name = "ServiceUsageTable"

    service_id = UnicodeAttribute(hash_key=True)
    day = UnicodeAttribute(range_key=True)  # YYYY-MM-DD, UTC
    used = NumberAttribute(default=0)
    sent = NumberAttribute(null=True)  # minute counters only
    expires_at = NumberAttribute(null=True)  # TTL: old days clean themselves up


class TaskCounts(MapAttribute[str, Any]):
    total = NumberAttribute(default=0)
    queued = NumberAttribute(default=0)
    sending = NumberAttribute(default=0)
    sent = NumberAttribute(default=0)
    failed = NumberAttribute(default=0)
    suppressed = NumberAttribute(default=0)
    unknown = NumberAttribute(default=0)
    cancelled = NumberAttribute(default=0)
    # What SES reported after sending (core.deliverability.ses_events), each counted once per email.
    delivered = NumberAttribute(default=0)
    bounced = NumberAttribute(default=0)  # permanent bounces (what SES's bounce rate counts)
    complained = NumberAttribute(default=0)
    soft_bounced = NumberAttribute(default=0)  # transient or undetermined bounces
    rejected = NumberAttribute(default=0)  # SES accepted, then refused to deliver (a virus)


class PlanState(MapAttribute[str, Any]):
    """Where the chunked planner stands; advanced only by a conditional write on `cursor`."""

    # count -> reserve -> write -> finish -> done; a cancel sweep adds swept-unplanned
    phase = UnicodeAttribute(default="count")
    cursor = UnicodeAttribute(default="")  # last contact id (or explicit-id position) handled
    counted = NumberAttribute(default=0)
    written = NumberAttribute(default=0)
    routing = ListAttribute[Any](of=UnicodeAttribute, default=list)  # frozen service cycle
    chunks = NumberAttribute(default=0)
    invocations = NumberAttribute(default=0)
    reserved_at = NumberAttribute(null=True)  # when the quota was reserved: every subtask's created_at


class TasksByUserIndex(GlobalSecondaryIndex["TaskModel"]):
    class Meta:
        index_name = "by-user"
        projection = AllProjection()

    user_id = UnicodeAttribute(hash_key=True)
    task_id = UnicodeAttribute(range_key=True)


class ActiveTasksIndex(GlobalSecondaryIndex["TaskModel"]):
    """Sparse: only tasks a dispatcher may send for carry `active_partition`."""

    class Meta:
        index_name = "active"
        projection = AllProjection()

    active_partition = UnicodeAttribute(hash_key=True)
    active_sort = UnicodeAttribute(range_key=True)  # user_id#task_id: users, then their tasks


class TaskModel(_Base):
    class Meta(_Base.Meta):
        table_name = "TasksTable"

    task_id = UnicodeAttribute(hash_key=True)
    user_id = UnicodeAttribute()
    name = UnicodeAttribute()
    sender_id = UnicodeAttribute()
    template_ids = ListAttribute[Any](of=UnicodeAttribute)
    contact_ids = ListAttribute[Any](of=UnicodeAttribute, default=list)
    include_tags = ListAttribute[Any](of=UnicodeAttribute, default=list)
    exclude_tags = ListAttribute[Any](of=UnicodeAttribute, default=list)
    has_rule = BooleanAttribute(default=False)
    scheduled_at = NumberAttribute(null=True)
    status = UnicodeAttribute()
    reason = UnicodeAttribute(null=True)
    counts = TaskCounts(default=TaskCounts)
    quota_reserved = NumberAttribute(null=True)
    quota_refunded = NumberAttribute(default=0)
    plan = PlanState(default=PlanState)
    planner_lease_owner = UnicodeAttribute(null=True)
    planner_lease_until = NumberAttribute(null=True)
    active_partition = UnicodeAttribute(null=True)
    active_sort = UnicodeAttribute(null=True)
    # Bumped when queued work reappears (retry-failed) or moves between services (failover): a
    # dispatcher that found the task's queue empty reads it again.
    requeue_seq = NumberAttribute(null=True)
    # Emails sent per minute (YYYY-MM-DDTHH:MM -> n), moved with the counters; only the last minutes
    # are kept (core.dispatch.rates). Created empty with the task: updates set keys inside it.
    sent_minutes = MapAttribute[str, Any](default=dict)
    # --- issue 12: priority, late-start guard, recipient local-time window ---
    priority = UnicodeAttribute(null=True)  # urgent | normal | bulk (null = normal): order within its user
    max_lateness = NumberAttribute(null=True)  # seconds; null = the stack default (core.late_start)
    late_start_confirmed = BooleanAttribute(null=True)  # the user said: send even though it is late
    # When its first claim was made: set in that claim's transaction, so the late-start guard's
    # conditional expiry and a first claim exclude each other (core.late_start, core.dispatch.claims).
    began_at = NumberAttribute(null=True)
    # {"start": "HH:MM", "end": "HH:MM", "timezone": default IANA zone, "quiet_days": ["sat", ...]}
    send_window = MapAttribute[str, Any](null=True)
    # Queued recipients per time zone as planned, and those that left the queue since (sent, failed,
    # ...), per zone: what waits for its window is their difference in zones now closed.
    window_planned = MapAttribute[str, Any](null=True)
    window_done = MapAttribute[str, Any](null=True)
    created_at = NumberAttribute()
    updated_at = NumberAttribute()

    by_user = TasksByUserIndex()
    active = ActiveTasksIndex()


class QueueIndex(GlobalSecondaryIndex["SubtaskModel"]):
    """Sparse: a subtask is in this index exactly while it is `queued`. The dispatcher's pick,
    "next queued subtasks of task T on service S in contact-id order", is one Query here."""

    class Meta:
        index_name = "queue"
        projection = AllProjection()

    queue_key = UnicodeAttribute(hash_key=True)  # service_id#task_id
    contact_id = UnicodeAttribute(range_key=True)


class MessageIndex(GlobalSecondaryIndex["SubtaskModel"]):
    """Sparse: a subtask is in this index once SES gave it a message id; an SES event finds its
    subtask by that id with one Query (core.deliverability.ses_events)."""

    class Meta:
        index_name = "by-message"
        projection = IncludeProjection(["task_id", "user_id", "service_id", "email", "status"])

    message_id = UnicodeAttribute(hash_key=True)


class SubtaskModel(_Base):
    """One recipient of one task. Partitioned by task shard, sorted by contact id."""

    class Meta(_Base.Meta):
        table_name = "SubtasksTable"

    partition = UnicodeAttribute(hash_key=True)  # task_id#shard
    contact_id = UnicodeAttribute(range_key=True)
    task_id = UnicodeAttribute()
    user_id = UnicodeAttribute()
    seq = NumberAttribute()  # position in the plan: contact-id order
    email = UnicodeAttribute()
    name = UnicodeAttribute(null=True)
    attributes = MapAttribute[str, Any](default=dict)  # snapshot for rendering, no extra read
    template_id = UnicodeAttribute()
    service_id = UnicodeAttribute()
    status = UnicodeAttribute()
    queue_key = UnicodeAttribute(null=True)
    attempts = NumberAttribute(default=0)
    next_attempt_at = NumberAttribute(default=0)
    message_id = UnicodeAttribute(null=True)
    error = UnicodeAttribute(null=True)
    error_class = UnicodeAttribute(null=True)
    claim_owner = UnicodeAttribute(null=True)  # the dispatcher invocation that claimed it
    timezone = UnicodeAttribute(null=True)  # the contact's, copied at planning (send windows)
    # The recipient's provider group when its domain's MX hosts are a provider's (core.mail.mx_groups);
    # null: core.mail.providers.group_of(email).
    group = UnicodeAttribute(null=True)
    sent_at = NumberAttribute(null=True)
    failed_at = NumberAttribute(null=True)  # when it became `failed` or `unknown` (the failures ledger)
    created_at = NumberAttribute()
    # --- what SES reported after the send (core.deliverability.ses_events) ---
    # The event kinds already applied (ses_events.EFFECTS keys): each kind's counters move once, in
    # the write that adds it here (core.deliverability.event_effects).
    ses_events = UnicodeSetAttribute(null=True)
    ses_sent_at = NumberAttribute(null=True)  # SES's Send event: accepted, will try to deliver
    delivered_at = NumberAttribute(null=True)
    bounced_at = NumberAttribute(null=True)  # a permanent bounce
    soft_bounced_at = NumberAttribute(null=True)  # a transient or undetermined bounce
    complained_at = NumberAttribute(null=True)
    rejected_at = NumberAttribute(null=True)
    delayed_at = NumberAttribute(null=True)
    rendering_failed_at = NumberAttribute(null=True)
    unsubscribed_at = NumberAttribute(null=True)  # SES subscription management: unsubscribe all
    bounce_type = UnicodeAttribute(null=True)  # Permanent | Transient | Undetermined (Permanent wins)
    bounce_subtype = UnicodeAttribute(null=True)
    delivery_detail = UnicodeAttribute(null=True)  # diagnostic, complaint type, delay type, reject reason

    queue = QueueIndex()
    by_message = MessageIndex()


class SchedulerStateModel(_Base):
    """Control-plane state. Key "scheduler": the running flag. Key "service#<id>": that service's
    dispatcher lease, pacing (last send time) and round-robin pointer."""

    class Meta(_Base.Meta):
        table_name = "SchedulerStateTable"

    state_key = UnicodeAttribute(hash_key=True)
    running = BooleanAttribute(null=True)
    lease_owner = UnicodeAttribute(null=True)
    lease_until = NumberAttribute(null=True)
    last_send_at = NumberAttribute(null=True)
    pointer_user = UnicodeAttribute(null=True)
    pointer_tasks = MapAttribute[str, Any](null=True)  # user_id -> last task served
    pointer_turn = NumberAttribute(null=True)  # picks pointer_user may still take in its weighted turn
    paused_reason = UnicodeAttribute(null=True)  # e.g. daily quota exhausted until a UTC day
    updated_at = NumberAttribute(null=True)
    last_health_check = NumberAttribute(null=True)
    # "scheduler": bumped by every control change (pause, resume, cancel, a task queued, a service
    # changed), so a sending dispatcher learns of one from a single read of this item.
    control_seq = NumberAttribute(null=True)
    # "service#<id>": bumped by each wake-up that found the lease held, so a holder about to stop
    # for lack of work looks once more instead (core.dispatch.lease).
    wake_seq = NumberAttribute(null=True)
    # "service#<id>": the in-flight journal, claim batch id -> keys claimed and not yet recorded
    # (core.dispatch.claims); what a successor marks `unknown` after a crash.
    inflight = MapAttribute[str, Any](null=True)
    # "service#<id>": recipient-domain group -> time of its last send (core.dispatch.domain_throttles),
    # saved at release so the next holder keeps each group's spacing.
    domain_sent = MapAttribute[str, Any](null=True)


class SuppressionModel(_Base):
    """A tenant's suppression list (core.suppressions): an address no campaign of the tenant may
    mail, keyed like its contact (contact id from the address), whether or not the contact exists."""

    class Meta(_Base.Meta):
        table_name = "SuppressionsTable"

    user_id = UnicodeAttribute(hash_key=True)
    contact_id = UnicodeAttribute(range_key=True)
    email = UnicodeAttribute()
    reason = UnicodeAttribute()  # bounced | complained | unsubscribed | manual
    created_at = NumberAttribute()
    # --- suppression attributes ---
    detail = UnicodeAttribute(null=True)  # e.g. SES's diagnostic for a bounce (at most 500 characters)
    updated_at = NumberAttribute(null=True)  # when a stronger reason replaced the first one


class ReputationModel(_Base):
    """Rolling reputation counters (core.deliverability.reputation): per scope (`user#<id>` or
    `service#<id>`) and bucket of time, what SES reported."""

    class Meta(_Base.Meta):
        table_name = "ReputationTable"

    scope = UnicodeAttribute(hash_key=True)
    bucket = UnicodeAttribute(range_key=True)
    expires_at = NumberAttribute(null=True)  # TTL
    # --- reputation attributes ---
    # An hour bucket (`YYYY-MM-DDTHH`, UTC, of the SES event): what SES reported in that hour, each
    # only ever ADDed (core.deliverability.reputation.record).
    sent = NumberAttribute(null=True)
    delivered = NumberAttribute(null=True)
    bounced = NumberAttribute(null=True)
    complained = NumberAttribute(null=True)
    # What the counters held when an admin last resumed the scope: the rates count only what came after.
    base_sent = NumberAttribute(null=True)
    base_bounced = NumberAttribute(null=True)
    base_complained = NumberAttribute(null=True)
    # The `~resets` item: resumes so far; a hold is written only while it is what the guard read.
    resets = NumberAttribute(null=True)


class ImportModel(_Base):
    """One bulk contact import from a CSV uploaded to S3 (core.audience.imports)."""

    class Meta(_Base.Meta):
        table_name = "ImportsTable"

    user_id = UnicodeAttribute(hash_key=True)
    import_id = UnicodeAttribute(range_key=True)
    status = UnicodeAttribute()
    created_at = NumberAttribute()
    updated_at = NumberAttribute()
    # --- import attributes ---
    filename = UnicodeAttribute(null=True)  # what the tenant called the file (shown, never used as a key)
    object_key = UnicodeAttribute(null=True)  # imports/<user_id>/<import_id>.csv in the uploads bucket
    upload_expires_at = NumberAttribute(null=True)  # the presigned PUT's expiry
    etag = UnicodeAttribute(null=True)  # the object imported: reads are pinned to it (If-Match)
    bytes_total = NumberAttribute(null=True)
    # checking (the whole file's structure) -> writing (chunks); the cursor moves only forward, in
    # conditional updates on bytes_done that also add each chunk's counts, so they count once.
    phase = UnicodeAttribute(null=True)
    columns = ListAttribute[Any](of=UnicodeAttribute, null=True)  # the header, normalised
    bytes_done = NumberAttribute(default=0)  # byte offset of the next unread record
    lines_done = NumberAttribute(default=0)  # physical lines before it (the header's included)
    rows_total = NumberAttribute(null=True)  # data rows, once the check pass has counted them
    rows_done = NumberAttribute(default=0)
    rows_imported = NumberAttribute(default=0)
    rows_failed = NumberAttribute(default=0)
    chunks = NumberAttribute(default=0)
    invocations = NumberAttribute(default=0)
    errors = ListAttribute[Any](default=list)  # the first row errors {line, column, reason}
    error_report_key = UnicodeAttribute(null=True)  # every row error, as CSV, in the uploads bucket
    reason = UnicodeAttribute(null=True)  # why a failed import failed
    duplicate_of = UnicodeAttribute(null=True)  # a completed import of the same bytes: nothing written
    started_at = NumberAttribute(null=True)
    finished_at = NumberAttribute(null=True)


ALL_MODELS: dict[str, type[Model]] = {
    "users_table": UserModel,
    "contacts_table": ContactModel,
    "templates_table": TemplateModel,
    "senders_table": SenderModel,
    "sender_identities_table": SenderIdentityModel,
    "services_table": EmailServiceModel,
    "service_usage_table": ServiceUsageModel,
    "tasks_table": TaskModel,
    "subtasks_table": SubtaskModel,
    "scheduler_state_table": SchedulerStateModel,
    "suppressions_table": SuppressionModel,
    "reputation_table": ReputationModel,
    "imports_table": ImportModel,
}


def bind_tables(settings: Settings) -> None:
    """Point every model at the table named in settings (once per container, or per test)."""
    for setting_name, model in ALL_MODELS.items():
        model.Meta.table_name = getattr(settings, setting_name)
        model._connection = None
    transaction_connection.cache_clear()


# An UpdateItem on an item a running transaction holds is refused (TransactionConflictException)
# and botocore does not retry it; the transaction ends within milliseconds, so try again.
_CONFLICT_ATTEMPTS = 5


def update_if(item: Model, actions: Sequence[Action], condition: Condition) -> bool:
    """Applies a conditional update; False when its condition did not hold (another writer moved
    the item first, or it is missing). Any other failure raises."""
    return _conditional(lambda: item.update(actions=list(actions), condition=condition), UpdateError)


def delete_if(item: Model, condition: Condition) -> bool:
    """Deletes under `condition`; False when it did not hold. Any other failure raises."""
    return _conditional(lambda: item.delete(condition=condition), DeleteError)


def _conditional(write: Callable[[], object], failure: type[PynamoDBException]) -> bool:
    """Runs a conditional write, again while a running transaction holds the item."""
    attempt = 0
    while True:
        try:
            write()
            return True
        except failure as error:
            if error.cause_response_code == "ConditionalCheckFailedException":
                return False
            attempt += 1
            if error.cause_response_code != "TransactionConflictException" or attempt == _CONFLICT_ATTEMPTS:
                raise
        time.sleep(backoff(attempt - 1, base=0.02))


@functools.lru_cache(maxsize=1)
def transaction_connection() -> Connection:
    """TransactWrite needs its own Connection; endpoint and region come from standard config. One
    per container (a botocore client takes tens of milliseconds to build; it is thread-safe)."""
    return Connection(max_retry_attempts=5)


# Typed access to nested attribute paths for update actions and conditions
# (PynamoDB types `TaskModel.plan.cursor` as the value, not as a path).
TASK_PLAN: Any = TaskModel.plan
TASK_COUNTS: Any = TaskModel.counts
