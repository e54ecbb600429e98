"""One dispatcher invocation for one email service: paced, fair, quota-safe, at most once.

The invocation
  1. takes the service's lease (a conditional write; an overlapping invocation exits at once, a
     successor waits for its predecessor's hand-off: core.dispatch.lease) and stops at once while
     the scheduler is stopped or the service is disabled, unhealthy or held (reputation guard);
  2. marks `unknown` whatever a dead predecessor's in-flight journal still lists as `sending`
     (never re-sent automatically: core.dispatch.repair);
  3. until its time budget is spent, picks work weighted round robin user -> task -> subtask from a
     pointer persisted in DynamoDB (a user's weight in picks per turn, its tasks by priority, in turn:
     core.dispatch.fairness), skipping without losing their place recipients held back by a domain
     limit or outside their local send window at the planned moment (core.dispatch.pick, over
     candidates, domain_throttles and send_windows);
  4. claims about one second of pace ahead in one transaction that also journals the batch under
     the lease and checks the controls (core.dispatch.claims; one unit each of a service-quota block
     reserved with a conditional ADD: core.dispatch.budget), renders the batch, then for each email
     waits for the service's pace (`sending_rate` seconds since the last send, also across
     invocations) and sends through SES v2 (core.dispatch.sender); claimed emails it stops before
     sending go back to their queue;
  5. records outcomes by the outcome table (core.dispatch.outcomes) in batches: subtask items
     (BatchWriteItem; the claim makes this invocation their only writer), and every few seconds task
     counters (with the task's move to `sending` or `completed` in the same request) and refunds;
  6. near the end of its budget, with work left, starts its successor (a wake-up naming itself), so
     sending continues across invocations at the service's pace (docs/dispatch.md).

Control (stop, pause, cancel, disable) is looked at every second of sending time with one request:
the claim itself, or a read (core.dispatch.control) while claimed emails wait their turn; tasks and
the service are reloaded only when the control sequence moved.

`attempts` counts failed tries: throttling and account-level errors spend none, a transient
error spends one and is retried after `retry_delay` while attempts < max_retries.

Requests per sent email at steady state: shares of the claim transaction (the look included), the
queue Query, the batched record, the counters and the quota block (so slow services pay most per
email: one claim a second; bench/dispatch.py measures it)."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from core.clock import Clock
from core.dispatch import lease, service_quota
from core.dispatch.budget import SendBudget
from core.dispatch.candidates import item_key
from core.dispatch.claims import (
    CLAIM_AHEAD_SECONDS,
    CLAIM_BATCH_LIMIT,
    ControlMoved,
    Journal,
    LeaseLost,
    TaskLeft,
    batch_owner,
    claim_subtasks,
    journal_key,
    release_claims,
)
from core.dispatch.control import read_control
from core.dispatch.domain_throttles import DomainThrottles, ThrottlePolicy
from core.dispatch.failover import fail_over
from core.dispatch.fairness import Pointer, TaskWork, UserWeights
from core.dispatch.lease import Release, Saved
from core.dispatch.outcomes import Move, ServiceEffect, outcome_of
from core.dispatch.pick import Picker
from core.dispatch.recorder import Recorder, TaskTally
from core.dispatch.repair import recover_in_flight
from core.dispatch.send_errors import classify_send_error
from core.dispatch.send_windows import SendWindow
from core.dispatch.sender import Completed, SesSender, send_request
from core.dispatch.tiers import Tier, tier_of
from core.dispatch.wakeups import WakeQueue, WakeRequest
from core.dispatch.warmup import service_day_quota
from core.errors import DomainError
from core.late_start import expire_if_late
from core.mail.mime import build_campaign_message
from core.mail.rendering import DEFAULT_RENDER_BUDGET, RenderedMessage, RenderTimeout, render_many, render_template
from core.mail.unsubscribe import sign_unsubscribe, unsubscribe_url
from core.states import DISPATCHABLE, SubtaskStatus
from core.storage.ids import queue_key
from core.storage.models import (
    EmailServiceModel,
    SchedulerStateModel,
    SenderModel,
    SubtaskModel,
    TaskModel,
    TemplateModel,
)
from core.suppressions import suppress_at_claim

CONTROL_REFRESH_SECONDS = 1.0  # pause/cancel/stop take effect within this much sending time
# Tasks and the service are reloaded at least this often even when no control change was announced.
FULL_RELOAD_SECONDS = 30.0
# Slower services are not handed off: their next send is at most one watchdog tick away anyway.
HANDOFF_MAX_INTERVAL_SECONDS = 60.0


class StopReason(StrEnum):
    BUDGET_SPENT = "budget_spent"
    NO_WORK = "no_work"
    LEASE_BUSY = "lease_busy"
    LEASE_LOST = "lease_lost"
    SCHEDULER_STOPPED = "scheduler_stopped"
    SERVICE_UNAVAILABLE = "service_unavailable"
    DAILY_QUOTA = "daily_quota_exhausted"
    WARMUP_ALLOWANCE = "warmup_allowance"  # today's warm-up allowance is spent (core.dispatch.warmup)
    ACCOUNT_PROBLEM = "account_problem"
    REPUTATION_HOLD = "reputation_hold"  # the reputation guard holds the service (core.deliverability.holds)


# Stops after which the service's queued work fails over (core.dispatch.failover), with the reason a
# task shows when no other service of its user can take it.
_FAILOVER_REASONS = {
    StopReason.SERVICE_UNAVAILABLE: "no_healthy_service",
    StopReason.ACCOUNT_PROBLEM: "no_healthy_service",
    StopReason.DAILY_QUOTA: "daily_quota_exhausted:{service_id}",
    StopReason.WARMUP_ALLOWANCE: "warmup_allowance:{service_id}",
    StopReason.REPUTATION_HOLD: "reputation_hold:{service_id}",
}

FaultHook = Callable[[str, SubtaskModel], None]


def _no_fault(point: str, subtask: SubtaskModel) -> None:
    return None


@dataclass
class DispatcherDeps:
    clock: Clock
    ses: Any  # boto3 sesv2 client
    dynamodb: Any  # boto3 DynamoDB client (BatchWriteItem)
    subtasks_table: str
    owner: str  # this invocation's token
    budget_seconds: float
    lease_seconds: float  # > the Lambda timeout: a lease that expired belongs to a dead invocation
    max_retries: int
    retry_delay: float
    batch_size: int
    unsubscribe_base_url: str
    unsubscribe_signing_key: str
    max_in_flight: int = 8
    render_budget_seconds: float = DEFAULT_RENDER_BUDGET  # wall clock for rendering one email
    # Starts successors (hand-off); without one an invocation simply stops at its budget.
    wake: WakeQueue | None = None
    # A successor is started this long before the budget ends (its cold start and queue delay).
    handoff_lead_seconds: float = 5.0
    # Test seam: called at "before_claim", "after_claim", "after_send", "after_record".
    fault: FaultHook = _no_fault
    # The sesv2 client of a region: a service sends through the SES account of its own region
    # (`ses` is used when this is not given: a client of the function's region).
    ses_for_region: Callable[[str], Any] | None = None
    # Where a provider deferral (SES DeliveryDelay) starts a group without a limit of its own.
    deferral_policy: ThrottlePolicy = field(default_factory=ThrottlePolicy)
    # A task's max_lateness when it sets none (core.late_start; settings.default_max_lateness_seconds).
    default_max_lateness: float = 86_400.0


@dataclass
class DispatchReport:
    service_id: str
    stop_reason: StopReason = StopReason.NO_WORK
    sent: int = 0
    failed: int = 0
    requeued: int = 0
    throttled: int = 0  # SES throttling replies (re-queued without spending an attempt)
    unknown: int = 0  # sends whose outcome is unknown (may have been sent)
    suppressed: int = 0  # claims refused because the address is on the suppression list
    recovered_unknown: int = 0
    failed_over: int = 0  # queued subtasks moved to other services (core.dispatch.failover)
    handed_off: bool = False
    send_times: list[float] = field(default_factory=list)
    interval: float | None = None  # the service's sending_rate as last loaded (PaceAchieved)

    def summary(self) -> dict[str, Any]:
        """What a tick reports (the handler's reply and log line)."""
        return {
            "service_id": self.service_id,
            "stop_reason": self.stop_reason.value,
            "sent": self.sent,
            "failed": self.failed,
            "requeued": self.requeued,
            "throttled": self.throttled,
            "unknown": self.unknown,
            "suppressed": self.suppressed,
            "recovered_unknown": self.recovered_unknown,
            "failed_over": self.failed_over,
            "handed_off": self.handed_off,
        }


# ---------------------------------------------------------------- service


def _load_service(service_id: str) -> EmailServiceModel | None:
    try:
        return EmailServiceModel.get(service_id, consistent_read=True)
    except EmailServiceModel.DoesNotExist:
        return None


def _load_works(tasks: list[TaskModel]) -> dict[str, TaskWork]:
    """What newly seen tasks send with: every template and sender in one BatchGetItem each, however
    many tasks (one read per task was most of a slow service's requests)."""
    if not tasks:
        return {}
    template_keys = sorted({(task.user_id, template_id) for task in tasks for template_id in task.template_ids})
    sender_keys = sorted({(task.user_id, task.sender_id) for task in tasks})
    templates = {(t.user_id, t.template_id): t for t in TemplateModel.batch_get(template_keys)}
    senders = {(s.user_id, s.sender_id): s for s in SenderModel.batch_get(sender_keys)}
    works = {}
    for task in tasks:
        sender = senders.get((task.user_id, task.sender_id))
        if sender is None:
            raise SenderModel.DoesNotExist(f"sender {task.sender_id} of task {task.task_id}")
        template = {i: templates[(task.user_id, i)] for i in task.template_ids if (task.user_id, i) in templates}
        window = SendWindow.from_item(task.send_window.as_dict() if task.send_window else None)
        works[task.task_id] = TaskWork(task=task, template=template, sender=sender, window=window)
    return works


# ---------------------------------------------------------------- the invocation


class _StopSending(DomainError):
    def __init__(self, reason: StopReason) -> None:
        super().__init__(reason.value)
        self.reason = reason


class Dispatcher:
    def __init__(self, service: EmailServiceModel, deps: DispatcherDeps, state: SchedulerStateModel) -> None:
        self.service = service
        self.deps = deps
        self.state = state
        self.report = DispatchReport(service_id=service.service_id, interval=float(service.sending_rate))
        self.journal = Journal(service.service_id, deps.owner)
        # Fast services write their records on a writer thread: a batch write would stall the pace.
        self.recorder = Recorder(deps, self.journal, background=tier_of(float(service.sending_rate)) is Tier.FAST)
        self.weights = UserWeights()
        self.budget = SendBudget(
            deps.clock,
            float(service.sending_rate),
            state.last_send_at,
            reserve=lambda wanted, now: service_quota.reserve_block(
                self.service.service_id, service_day_quota(self.service, now).effective, wanted, now
            ),
            release=lambda units, reserved_at: service_quota.release(self.service.service_id, units, reserved_at),
        )
        self.next_refresh = 0.0
        self.next_reload = 0.0  # tasks and service: reloaded when control changes, or by this time
        self.control_seen: tuple[int, int] | None = None  # (control_seq, wake_seq) at the last reload
        self.wake_seen = int(state.wake_seq or 0)
        ses = deps.ses_for_region(service.region) if deps.ses_for_region else deps.ses
        self.sender = SesSender(ses, deps.max_in_flight)
        self.claimed: deque[tuple[TaskWork, SubtaskModel]] = deque()  # claimed, in send order, not sent yet
        # Claimed emails rendered with their batch (one render-worker round trip per template).
        # (its result, its unsubscribe link), by subtask key: the link is signed once per email.
        self.rendered: dict[tuple[str, str], tuple[RenderedMessage | DomainError, str]] = {}
        # Recipient-domain limits and interleaving (core.dispatch.domain_throttles). A journal still
        # listing another invocation's batches means it died holding the lease: it may have sent later
        # than the last sends it saved.
        throttles = DomainThrottles()
        inflight = state.inflight.as_dict() if state.inflight else {}
        throttles.load(
            state.domain_sent.as_dict() if state.domain_sent else None,
            deps.clock.now(),
            after_crash=any(batch_owner(batch_id) != deps.owner for batch_id in inflight),
        )
        tasks = state.pointer_tasks.as_dict() if state.pointer_tasks else {}
        pointer = Pointer(state.pointer_user or "", tasks, int(state.pointer_turn or 0))
        self.picker = Picker(service.service_id, deps.clock, deps.batch_size, deps.owner, pointer, throttles)

    # ---------------------------------------------------------------- control

    def refresh(self, now: float) -> None:
        """Looks at the controls (one request). Reloads tasks and service when a control change was
        announced, a wake-up came in, a scheduled task fell due, or FULL_RELOAD_SECONDS passed."""
        control = read_control(self.service.service_id)
        if not control.running:
            raise _StopSending(StopReason.SCHEDULER_STOPPED)
        if control.lease_owner != self.deps.owner:
            raise _StopSending(StopReason.LEASE_LOST)  # expired while this invocation stalled
        self.wake_seen = control.wake_seq
        seen = (control.control_seq, control.wake_seq)
        if seen != self.control_seen or now >= self.next_reload:
            self.control_seen = seen  # first: the reload reads users' weights again when control_seq moved
            self.reload(now)
        self.next_refresh = now + CONTROL_REFRESH_SECONDS

    def reload(self, now: float) -> None:
        """Re-reads the service's switches and which tasks may send (pause, cancel, new tasks)."""
        service = _load_service(self.service.service_id)
        if service is None or not service.enabled or not service.is_healthy:
            raise _StopSending(StopReason.SERVICE_UNAVAILABLE)
        if service.sending_hold:
            raise _StopSending(StopReason.REPUTATION_HOLD)
        self.service = service
        self.budget.interval = self.report.interval = float(service.sending_rate)
        self.picker.throttles.configure(
            service.domain_limits.as_dict() if service.domain_limits else None,
            service.domain_deferrals.as_dict() if service.domain_deferrals else None,
            service.interleave_domains is not False,
            now,
            self.deps.deferral_policy,
        )
        works: dict[str, TaskWork] = {}
        new: list[TaskModel] = []
        next_due = now + FULL_RELOAD_SECONDS
        for task in TaskModel.active.query("active"):
            if task.status not in DISPATCHABLE or self.service.service_id not in set(task.plan.routing or []):
                continue
            if (task.scheduled_at or 0) > now:
                next_due = min(next_due, float(task.scheduled_at))
                continue
            known = self.picker.works.get(task.task_id)
            if known is None:
                if expire_if_late(task, now, self.deps.default_max_lateness):
                    continue  # not sent late: expired until its user confirms (core.late_start)
                new.append(task)
                continue
            # A known task's queue keeps its read state: nothing is added to it but this invocation's
            # own retries (tracked by recheck_at), failover and retry-failed (which bump requeue_seq);
            # a task resumed after a pause comes back as new.
            if (task.requeue_seq or 0) != (known.task.requeue_seq or 0):
                known.rescan()
            known.task = task
            works[task.task_id] = known
        works.update(_load_works(new))
        self.picker.works = works
        self.recorder.loaded([work.task for work in works.values()], new=[task.task_id for task in new])
        users = [work.task.user_id for work in works.values()]
        self.picker.fairness.replace_tasks(
            works, self.weights.of(users, self.control_seen[0] if self.control_seen else 0)
        )
        self.next_reload = next_due
        # Claimed but unsent emails of a task paused or cancelled meanwhile are not sent.
        dropped = [subtask for _, subtask in self.claimed if subtask.task_id not in works]
        if dropped:
            self.claimed = deque(pick for pick in self.claimed if pick[1].task_id in works)
            for subtask in dropped:
                self.rendered.pop((subtask.partition, subtask.contact_id), None)
            self.budget.give_back(release_claims(dropped, self.journal, now))

    # ---------------------------------------------------------------- per email

    def claim_next(self, now: float, deadline: float) -> bool:
        """Picks the next sends in fair order (about CLAIM_AHEAD_SECONDS of pace, at most
        CLAIM_BATCH_LIMIT, no more than the budget leaves time for), takes a quota unit for each and
        claims them in one request. False when nothing is left to pick."""
        # What the loop achieves, when slower than the pace (SES latency, a loaded machine): claims
        # are for sends that will happen, not for ones the budget ends before.
        interval = max(self.budget.interval, self.budget.cycle, 0.001)
        size = max(
            1,
            min(CLAIM_BATCH_LIMIT, math.ceil(CLAIM_AHEAD_SECONDS / interval), self.budget.sends_before(deadline, now)),
        )
        planned = self.picker.throttles.snapshot()
        # Planned at the pace, or at the pace achieved when the loop is slower (no pacing, a slow SES):
        # a send that then goes earlier than planned waits for its group at the send (hold_for_gates).
        picks = self.picker.pick(
            size, max(now, self.budget.next_slot(now)), max(self.budget.interval, self.budget.cycle)
        )
        if not picks:
            return False
        for _, subtask in picks:
            self.deps.fault("before_claim", subtask)
        # Quota before the claim: no claim waits on quota. A block covers what the budget leaves time for.
        wanted = min(self.deps.batch_size, self.budget.sends_before(deadline, now) + 1)
        taken = 0
        while taken < len(picks) and self.budget.take(now, wanted):
            taken += 1
        if taken == 0:
            ramp_limits = service_day_quota(self.service, now).ramp_limits
            raise _StopSending(StopReason.WARMUP_ALLOWANCE if ramp_limits else StopReason.DAILY_QUOTA)
        picks = picks[:taken]  # the rest stay queued; the next pick finds the quota spent
        seen_seq = self.control_seen[0] if self.control_seen else 0
        # Tasks not known to have begun: their first claim marks them begun (core.late_start).
        first_claims = {work.task.task_id for work, _ in picks if work.task.began_at is None}
        try:
            claimed = claim_subtasks([subtask for _, subtask in picks], self.journal, now, seen_seq, first_claims)
        except (ControlMoved, TaskLeft) as moved:  # a control change since the last look: nothing was claimed
            self.budget.give_back(len(picks))
            self.picker.throttles.restore(planned)
            for work, subtask in reversed(picks):  # picked again, in the same order, if still allowed
                self.picker.unpick(work, subtask)
            if isinstance(moved, TaskLeft):
                self.reload(now)  # the task left before its move was announced: drop it now
            else:
                self.refresh(now)
            return True
        except LeaseLost as lost:
            self.budget.give_back(len(picks))
            raise _StopSending(StopReason.LEASE_LOST) from lost
        # The claim was also the look at the controls.
        self.next_refresh = max(self.next_refresh, now + CONTROL_REFRESH_SECONDS)
        batch = [(work, subtask) for work, subtask in picks if journal_key(subtask) in claimed.keys]
        for work, _ in batch:
            if work.task.began_at is None:
                work.task.began_at = now
        for _, subtask in picks:
            if journal_key(subtask) not in claimed.keys:
                self.picker.picked_key.pop(item_key(subtask), None)
        self.budget.give_back(len(picks) - len(batch))  # cancelled, suppressed or taken meanwhile
        self.claimed.extend(batch)  # tracked before anything else can fail: finish() releases them
        # Addresses suppressed since planning: moved to `suppressed` and refunded here (or by the
        # list's sweep, whichever moves them first).
        self.report.suppressed += sum(suppress_at_claim(subtask, now) for subtask in claimed.suppressed)
        for _, subtask in batch:
            self.deps.fault("after_claim", subtask)
        self.render_batch(batch)
        return True

    def hold_for_gates(self, work: TaskWork, subtask: SubtaskModel, now: float, deadline: float) -> float | None:
        """The moment a claimed email may go: its group's spacing counted from the sends actually made
        (a send late for its plan may wait a little), inside its recipient's window. None when it
        cannot go in this invocation, or its window closed meanwhile: the claim goes back."""
        gate = self.picker.throttles.send_gate(self.picker.picked_key.get(item_key(subtask), ("", ""))[0])
        if now < gate < deadline:
            self.deps.clock.sleep(gate - now)
            now = self.deps.clock.now()
        window_shut = work.window is not None and not work.window.is_open(subtask.timezone, now)
        if now < gate or window_shut:
            self.rendered.pop(item_key(subtask), None)
            self.budget.give_back(release_claims([subtask], self.journal, now))
            self.picker.unpick(work, subtask)
            return None
        return now

    def render_batch(self, batch: list[tuple[TaskWork, SubtaskModel]]) -> None:
        """Renders a claimed batch ahead of its sends, one worker round trip per template. What
        render_many leaves out (after a late render) is rendered one at a time by build()."""
        groups: dict[tuple[str, str], list[tuple[TaskWork, SubtaskModel]]] = {}
        for work, subtask in batch:
            groups.setdefault((subtask.task_id, subtask.template_id), []).append((work, subtask))
        for picks in groups.values():
            work, first = picks[0]
            contacts = [self.contact(subtask) for _, subtask in picks]
            results = render_many(work.template[first.template_id], contacts, self.deps.render_budget_seconds)
            for (_, subtask), contact, result in zip(picks, contacts, results, strict=False):
                self.rendered[(subtask.partition, subtask.contact_id)] = (result, contact["unsubscribe_url"])

    def contact(self, subtask: SubtaskModel) -> dict[str, Any]:
        token = sign_unsubscribe(
            self.deps.unsubscribe_signing_key, subtask.user_id, subtask.contact_id, subtask.task_id
        )
        return {
            "email": subtask.email,
            "name": subtask.name,
            "attributes": subtask.attributes.as_dict() if subtask.attributes else {},
            "unsubscribe_url": unsubscribe_url(self.deps.unsubscribe_base_url, token),
        }

    def give_back_claims(self) -> None:
        """Claimed emails this invocation stops before sending go back to their queue (or, when
        their task was cancelled meanwhile, are cancelled and refunded: the task's sweep skipped
        them as claimed)."""
        claimed, self.claimed = [subtask for _, subtask in self.claimed], deque()
        self.rendered.clear()
        if claimed:
            self.budget.give_back(release_claims(claimed, self.journal, self.deps.clock.now()))

    def build(self, work: TaskWork, subtask: SubtaskModel) -> bytes:
        ahead = self.rendered.pop((subtask.partition, subtask.contact_id), None)
        if ahead is None:  # left out of its batch (after a late render): alone, as before
            contact = self.contact(subtask)
            link = contact["unsubscribe_url"]
            # In a worker process: a template over the budget costs this loop the budget, no more.
            rendered = render_template(work.template[subtask.template_id], contact, self.deps.render_budget_seconds)
        else:
            result, link = ahead
            if isinstance(result, DomainError):
                raise result
            rendered = result
        domain = self.service.from_domain or work.sender.email.rpartition("@")[2]
        return build_campaign_message(
            sender_name=work.sender.name,
            sender_email=work.sender.email,
            recipient_name=subtask.name,
            recipient_email=subtask.email,
            rendered=rendered,
            message_id_domain=domain,
            unsubscribe_url=link,
        )

    def send_one(self, work: TaskWork, subtask: SubtaskModel, now: float) -> None:
        try:
            raw = self.build(work, subtask)
        except DomainError as error:  # the template cannot render for this contact, or not in time
            self.budget.give_back()
            self.fail(subtask, "render_timeout" if isinstance(error, RenderTimeout) else "render", error.message)
            return
        except ValueError as error:  # e.g. an address the MIME builder refuses
            self.budget.give_back()
            self.fail(subtask, "message", str(error))
            return
        self.budget.sent(now)
        self.picker.throttles.sent(self.picker.picked_key.pop(item_key(subtask), ("", ""))[0], now)
        self.report.send_times.append(now)
        request = send_request(work.sender.email, subtask, raw, self.service.configuration_set)
        for completed in self.sender.submit(subtask, request, now, float(self.service.sending_rate)):
            self.settle(completed)

    def settle(self, completed: Completed) -> None:
        """Records an SES call's outcome (core.dispatch.outcomes) at the paced instant it was made."""
        subtask = completed.subtask
        error = completed.reply.exception()
        if error is not None and not isinstance(error, ClientError | BotoCoreError):
            raise error  # our own bug, maybe after SES took the email: it stays `sending` -> `unknown`
        failure = classify_send_error(error) if error is not None else None
        outcome = outcome_of(failure)
        if outcome.quota_used:
            self.deps.fault("after_send", subtask)
        else:
            self.budget.give_back()  # SES did not take it: the quota unit was not used
        now = self.deps.clock.now()
        if outcome.move is Move.SENT:
            subtask.status = SubtaskStatus.SENT
            subtask.message_id = completed.reply.result()
            subtask.sent_at = completed.sent_at
            subtask.error = None
            subtask.error_class = None
            self.report.sent += 1
            self.recorder.add(subtask, lambda tally: setattr(tally, "sent", tally.sent + 1))
            return
        assert failure is not None
        detail = f"{failure.code}: {failure.message}"
        if outcome.move is Move.UNKNOWN:  # the request may have reached SES: at most once wins
            subtask.status = SubtaskStatus.UNKNOWN
            self.report.unknown += 1
            subtask.failed_at = now
            subtask.error_class = failure.error_class.value
            subtask.error = detail[:500]
            self.recorder.add(subtask, lambda tally: setattr(tally, "unknown", tally.unknown + 1))
        elif outcome.move is Move.REQUEUE:
            self.requeue(subtask, failure.error_class, failure.message, retry_at=0, spend_attempt=False)
        elif outcome.move is Move.RETRY and int(subtask.attempts or 0) < self.deps.max_retries:
            retry_at = now + self.deps.retry_delay
            self.requeue(subtask, failure.error_class, failure.message, retry_at=retry_at, spend_attempt=True)
        else:
            subtask.attempts = int(subtask.attempts or 0) + 1
            self.fail(subtask, failure.error_class.value, detail)
        self.affect_service(outcome.service, detail, now)

    def affect_service(self, effect: ServiceEffect, detail: str, now: float) -> None:
        if effect is ServiceEffect.BACK_OFF:
            self.report.throttled += 1
            self.budget.throttled(now)
        elif effect is ServiceEffect.STOP_FOR_THE_DAY:
            self.budget.quota_spent()
            raise _StopSending(StopReason.DAILY_QUOTA)
        elif effect is ServiceEffect.MARK_UNHEALTHY:
            EmailServiceModel(self.service.service_id).update(
                actions=[EmailServiceModel.is_healthy.set(False), EmailServiceModel.health_reason.set(detail[:500])]
            )
            raise _StopSending(StopReason.ACCOUNT_PROBLEM)

    def requeue(
        self, subtask: SubtaskModel, error_class: str, message: str, *, retry_at: float, spend_attempt: bool
    ) -> None:
        subtask.status = SubtaskStatus.QUEUED
        subtask.queue_key = queue_key(subtask.service_id, subtask.task_id)
        subtask.claim_owner = None
        subtask.next_attempt_at = retry_at
        subtask.error_class = error_class
        subtask.error = message[:500]
        if spend_attempt:
            subtask.attempts = int(subtask.attempts or 0) + 1
        self.picker.taken.discard((subtask.partition, subtask.contact_id))  # may be picked again when due
        work = self.picker.works.get(subtask.task_id)
        if work is not None:  # its queue is looked at again once the retry is due (and recorded)
            work.recheck_at = min(work.recheck_at, max(retry_at, self.deps.clock.now() + 1.0))
        self.report.requeued += 1
        self.recorder.add(subtask)

    def fail(self, subtask: SubtaskModel, error_class: str, message: str) -> None:
        subtask.status = SubtaskStatus.FAILED
        subtask.failed_at = self.deps.clock.now()
        subtask.error_class = error_class
        subtask.error = message[:500]
        self.report.failed += 1

        def tally(t: TaskTally) -> None:
            t.failed += 1
            t.refund += 1  # never sent: the user's quota comes back

        self.recorder.add(subtask, tally)

    # ---------------------------------------------------------------- loop

    def run(self, started: float) -> DispatchReport:
        deadline = started + self.deps.budget_seconds
        first = True
        while True:
            try:
                self.report.stop_reason = self.send_until_stopped(deadline, first)
            except BaseException:
                self.finish(unless_woken_since=None)
                raise
            first = False
            # Stopping for lack of work is called off by a wake-up that came in since the last look.
            woken = self.wake_seen if self.report.stop_reason is StopReason.NO_WORK else None
            if self.finish(unless_woken_since=woken) is not Release.WOKEN:
                break
            self.next_refresh = 0.0
        reason = _FAILOVER_REASONS.get(self.report.stop_reason)
        if reason is not None:  # its queued work goes to the users' other services, or waits
            moved = fail_over(
                self.service.service_id,
                reason.format(service_id=self.service.service_id),
                self.deps.clock.now(),
                wake=self.deps.wake,
                time_left=lambda: deadline - self.deps.clock.now(),
            )
            self.report.failed_over = moved.moved
        return self.report

    def send_until_stopped(self, deadline: float, first: bool) -> StopReason:
        try:
            self.refresh(self.deps.clock.now())
            if first:
                self.report.recovered_unknown = recover_in_flight(self.state, self.deps)
            while True:
                if not self.budget.wait(deadline):
                    self.hand_off(deadline)
                    return StopReason.BUDGET_SPENT
                now = self.deps.clock.now()
                # A claim is also the look at the controls (core.dispatch.claims): a separate look is
                # for claimed emails waiting their turn, or for tasks to reload.
                if now >= self.next_reload or (now >= self.next_refresh and self.claimed):
                    self.refresh(now)
                if not self.claimed and not self.claim_next(now, deadline):
                    if now >= self.next_refresh:  # nothing to pick in a view older than a second
                        self.refresh(now)
                        continue
                    opens = self.picker.gated_until(now)
                    if opens >= deadline:
                        return StopReason.NO_WORK
                    # Work is held back by a domain limit or a window that opens within this
                    # invocation: wait for it, looking at the controls every second meanwhile.
                    self.deps.clock.sleep(max(0.01, min(opens, self.next_refresh) - now))
                    continue
                if not self.claimed:
                    continue  # every pick was taken meanwhile: pick again
                if now >= deadline - self.deps.handoff_lead_seconds:
                    self.hand_off(deadline)
                work, subtask = self.claimed.popleft()
                at = self.hold_for_gates(work, subtask, now, deadline)
                if at is not None:
                    self.send_one(work, subtask, at)
        except _StopSending as stop:
            return stop.reason

    def hand_off(self, deadline: float) -> None:
        """Starts the successor that takes the lease when this invocation lets it go (once)."""
        if self.report.handed_off or self.deps.wake is None:
            return
        if float(self.service.sending_rate) > HANDOFF_MAX_INTERVAL_SECONDS:
            return
        self.report.handed_off = self.deps.wake.successor(
            self.service.service_id, self.deps.owner, deadline, float(self.service.sending_rate)
        )

    def finish(self, unless_woken_since: int | None) -> Release:
        """Settles every email still in flight and writes every buffered outcome, even when one of
        them fails: a failure makes only its own email `unknown` (it stays `sending`), and is
        re-raised once the rest is recorded. Then gives the lease up (see lease.release)."""
        first_error: BaseException | None = None
        released = Release.LOST
        try:
            self.give_back_claims()
            for completed in self.sender.drain():
                try:
                    self.settle(completed)
                except _StopSending as stop:
                    self.report.stop_reason = stop.reason
                    unless_woken_since = None
                except Exception as error:  # recorded, re-raised once the rest is written
                    first_error = first_error or error
            self.recorder.flush(move_counters=True)
        finally:
            self.sender.close()
            first_error = first_error or self.recorder.close()  # all written before the lease goes
            self.budget.close()
            if self.report.send_times:
                EmailServiceModel(self.service.service_id).update(
                    actions=[EmailServiceModel.last_sent.set(self.report.send_times[-1])]
                )
            saved = Saved(
                self.picker.fairness.pointer.user,
                dict(self.picker.fairness.pointer.tasks),
                self.budget.last_send_at,
                tuple(self.journal.settled_batches()),
                domain_sent=self.picker.throttles.saved(self.deps.clock.now()),
                pointer_turn=self.picker.fairness.pointer.turn_left,
            )
            released = lease.release(
                self.service.service_id,
                self.deps.owner,
                saved,
                self.deps.clock.now(),
                unless_woken_since=unless_woken_since if first_error is None else None,
            )
        if first_error is not None:
            raise first_error
        return released


# A successor waits this long past its predecessor's deadline for the lease (the predecessor's last
# flush); longer means the predecessor is stalled or dead, and the watchdog tick takes over.
HANDOFF_GRACE_SECONDS = 30.0


def dispatch_service(service_id: str, deps: DispatcherDeps, request: WakeRequest | None = None) -> DispatchReport:
    """Runs one invocation of the service's dispatcher (see the module docstring): a schedule tick
    or a wake-up (request=None is a tick), or a successor taking over its predecessor's lease."""
    started = deps.clock.now()
    if request is not None and request.predecessor and request.handoff_at is not None:
        wait_until = min(request.handoff_at + HANDOFF_GRACE_SECONDS, started + deps.budget_seconds)
        state = lease.await_release(
            service_id, deps.owner, request.predecessor, request.handoff_at, deps.clock, deps.lease_seconds, wait_until
        )
    else:
        if request is not None and request.is_wake_up:
            lease.note_wake(service_id)  # before trying the lease: see core.dispatch.lease
        state = lease.acquire(service_id, deps.owner, started, deps.lease_seconds)
    if state is None:
        return DispatchReport(service_id=service_id, stop_reason=StopReason.LEASE_BUSY)
    service = _load_service(service_id)
    if service is None:
        saved = Saved(state.pointer_user or "", {}, state.last_send_at)
        lease.release(service_id, deps.owner, saved, deps.clock.now())
        return DispatchReport(service_id=service_id, stop_reason=StopReason.SERVICE_UNAVAILABLE)
    return Dispatcher(service, deps, state).run(deps.clock.now())
