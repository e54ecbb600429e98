"""Settings read once, at cold start, from the environment the template gives each function."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every knob the functions read. Names match the template's environment variables."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore")

    users_table: str = Field(default="UsersTable")
    contacts_table: str = Field(default="ContactsTable")
    templates_table: str = Field(default="TemplatesTable")
    senders_table: str = Field(default="SendersTable")
    services_table: str = Field(default="ServicesTable")
    service_usage_table: str = Field(default="ServiceUsageTable")
    tasks_table: str = Field(default="TasksTable")
    subtasks_table: str = Field(default="SubtasksTable")
    scheduler_state_table: str = Field(default="SchedulerStateTable")
    sender_identities_table: str = Field(default="SenderIdentitiesTable")
    suppressions_table: str = Field(default="SuppressionsTable")
    reputation_table: str = Field(default="ReputationTable")
    imports_table: str = Field(default="ImportsTable")
    # Bulk CSV imports (core.audience.imports): the uploads bucket, the queue of S3 events and
    # continuations, how much one chunk commits at a time, and when an invocation hands over.
    import_bucket: str = Field(default="")
    import_queue_url: str = Field(default="")
    import_chunk_rows: int = Field(default=1000, ge=1, le=20_000)
    import_safety_margin_seconds: float = Field(default=60.0, ge=0)
    # Powertools Idempotency's persistence table (Idempotency-Key on creating POSTs).
    idempotency_table: str = Field(default="IdempotencyTable")
    planner_queue_url: str = Field(default="")

    # EventBridge Scheduler: one schedule per email service invokes the dispatcher (the paced one
    # for services at most 10/s: core.dispatch.tiers).
    dispatcher_function_arn: str = Field(default="")
    paced_dispatcher_function_arn: str = Field(default="")
    scheduler_role_arn: str = Field(default="")
    schedule_group: str = Field(default="default")
    dispatch_dead_letter_queue_arn: str = Field(default="")
    dispatcher_budget_seconds: float = Field(default=240.0, gt=0, le=840)
    # The dispatch wake-up queue (core.dispatch.wakeups): prompt starts and hand-offs.
    dispatch_wake_queue_url: str = Field(default="")
    paced_dispatch_wake_queue_url: str = Field(default="")
    # A dispatcher starts its successor this long before its budget ends (cold start, queue delay).
    dispatcher_handoff_lead_seconds: float = Field(default=5.0, ge=0, le=60)

    # One-click unsubscribe links (RFC 8058) carried in every campaign email.
    unsubscribe_base_url: str = Field(default="http://127.0.0.1:3000/unsubscribe")
    unsubscribe_signing_key: str = Field(default="local-development-signing-key-change-me")
    # In AWS the key lives in Secrets Manager; when this names a secret, its value replaces
    # `unsubscribe_signing_key` at cold start.
    unsubscribe_signing_key_secret_arn: str = Field(default="")

    # Wall-clock budget for rendering one email (subject, html and text together).
    render_budget_ms: int = Field(default=200, ge=10, le=10_000)

    # Test sends (POST /api/templates/{id}/test-send), per user: at least this many seconds apart
    # and at most this many an hour (core.api.rate_limits.take_test_send).
    test_send_interval_seconds: int = Field(default=10, ge=0, le=3600)
    test_sends_per_hour: int = Field(default=20, ge=1, le=3600)

    # Each new sender makes SES mail a verification link: at most this many per user per hour.
    sender_creations_per_hour: int = Field(default=20, ge=1)

    # Suppression list (core.suppressions): bounced and complained addresses are also put on the SES
    # account-level suppression list (PutSuppressedDestination), best effort.
    ses_account_suppression_mirror: bool = Field(default=False)

    max_retries: int = Field(default=3, ge=0)
    retry_delay_seconds: int = Field(default=60, ge=0)
    batch_size: int = Field(default=50, ge=1, le=1000)
    health_check_interval_minutes: int = Field(default=60, ge=1)

    # Reputation guard (core.deliverability.reputation): a tenant's or a service's sending is held when
    # over the window its bounces or complaints reach these shares of its sends (AWS reviews an account
    # at 5% / 0.1%), once the window holds at least `reputation_min_sends` sends. The window is the
    # last `reputation_window_hours` hours (hourly buckets), or, when `reputation_window_sends` > 0, the
    # most recent hours that hold that many sends (within the same hours).
    reputation_bounce_rate: float = Field(default=0.04, gt=0, le=1)
    reputation_complaint_rate: float = Field(default=0.0008, gt=0, le=1)
    reputation_min_sends: int = Field(default=200, ge=1)
    reputation_window_hours: int = Field(default=24, ge=1, le=168)
    reputation_window_sends: int = Field(default=0, ge=0)

    # Late-start guard (core.late_start): a task whose sending would begin more than this many seconds
    # after its scheduled_at (or creation) becomes `expired` unless it sets its own max_lateness.
    default_max_lateness_seconds: int = Field(default=86_400, ge=60, le=31_536_000)
    # Provider deferrals (core.deliverability.deferrals): each SES DeliveryDelay of a throttling kind
    # halves that recipient group's limit on the service (one more halving per step, down to
    # 2**-max_level) for cooldown seconds; a group without a configured limit starts from
    # deferral_default_per_minute.
    deferral_cooldown_seconds: int = Field(default=1800, ge=60, le=86_400)
    deferral_step_seconds: int = Field(default=300, ge=1, le=86_400)
    deferral_max_level: int = Field(default=4, ge=1, le=10)
    deferral_default_per_minute: int = Field(default=60, ge=1)

    # The planner stops starting new chunks this many seconds before Lambda's deadline.
    planner_safety_margin_seconds: float = Field(default=20.0, ge=0)
    # MX grouping (core.mail.mx_groups): the planner groups a domain received by a big provider's
    # servers (Google Workspace, Microsoft 365, ...) with that provider; each chunk's new domains are
    # looked up within mx_lookup_seconds. Off by default: it makes DNS lookups.
    mx_grouping: bool = Field(default=False)
    mx_lookup_seconds: float = Field(default=2.0, gt=0, le=30)
    # Contacts the planner reads per chunk (one Query each).
    planner_page_size: int = Field(default=2000, ge=1, le=5000)
    # A planner lease outlives the longest possible invocation, so a stale holder is surely dead.
    planner_lease_seconds: float = Field(default=330.0, gt=0)

    # SES events (core.deliverability.event_effects): the queue the events function reads, so an
    # event whose subtask is not recorded yet comes back sooner than the visibility timeout.
    ses_events_queue_url: str = Field(default="")


@lru_cache(maxsize=1)
def load_settings() -> Settings:
    return Settings()
