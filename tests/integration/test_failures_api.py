"""The failed-recipient ledger (GET /api/tasks/{id}/failures) and retry-failed (POST
/api/tasks/{id}/retry-failed): a campaign sent through an SES stand-in that rejects some addresses
for good and times out on others, then listed, retried and sent again."""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest
from botocore.exceptions import ClientError, ReadTimeoutError

from core.api import failures
from core.api.auth import Caller
from core.api.paging import encode_cursor
from core.clock import SystemClock
from core.settings import Settings
from core.storage.models import SubtaskModel, TaskModel, UserModel
from tests.concurrency.conftest import aws_server, embedded_aws  # noqa: F401 (fixtures)
from tests.conftest import ApiClient, FakeClock
from tests.integration.given import assert_rejected
from tests.support.dispatching import World, start_scheduler, task

RECIPIENTS = 40


def _address(number: int) -> str:
    return f"person{number}@example.org"  # as tests.support.planning.seed_contacts names them


# 30 rejected for good, 3 timing out (may have been sent), 7 accepted.
REJECTED = {_address(n) for n in range(RECIPIENTS) if n % 4}
TIMING_OUT = {_address(n) for n in (0, 4, 8)}
ACCEPTED = {_address(n) for n in range(RECIPIENTS)} - REJECTED - TIMING_OUT


class ScriptedSes:
    """SES v2 stand-in: rejects some addresses (MessageRejected, a permanent failure), times out on
    others (the send's outcome is lost: `unknown`), accepts the rest; counts calls and acceptances
    per address."""

    def __init__(self, rejected: Iterable[str] = (), timing_out: Iterable[str] = ()) -> None:
        self.rejected = set(rejected)
        self.timing_out = set(timing_out)
        self.calls: Counter[str] = Counter()
        self.accepted: Counter[str] = Counter()
        self.lock = threading.Lock()

    def send_email(self, **request: Any) -> dict[str, str]:
        (address,) = request["Destination"]["ToAddresses"]
        with self.lock:
            self.calls[address] += 1
        if address in self.rejected:
            error = {"Code": "MessageRejected", "Message": "Email address is not verified."}
            raise ClientError({"Error": error, "ResponseMetadata": {"HTTPStatusCode": 400}}, "SendEmail")
        if address in self.timing_out:
            raise ReadTimeoutError(endpoint_url="https://email.us-east-1.amazonaws.com")
        with self.lock:
            self.accepted[address] += 1
        return {"MessageId": f"msg-{uuid.uuid4().hex}"}


@dataclass
class Sent:
    task_id: str
    ses: ScriptedSes


@pytest.fixture
def world(aws: Settings, clock: FakeClock) -> World:
    start_scheduler(clock.now())
    return World(aws, clock)


def _sent_campaign(world: World, user: str = "alice", quota: int = 100) -> Sent:
    """A 40-recipient campaign of `user`, sent to the end: 30 failed, 3 unknown, 7 sent."""
    world.service("svc", sending_rate=0.1)
    task_id = world.campaign(user, RECIPIENTS, ["svc"], quota=quota)
    ses = ScriptedSes(REJECTED, TIMING_OUT)
    world.tick("svc", budget=30.0, ses=ses)
    assert task(task_id).status == "completed"
    return Sent(task_id, ses)


@pytest.fixture
def sent(world: World) -> Sent:
    return _sent_campaign(world)


def _subtasks(task_id: str) -> dict[str, SubtaskModel]:
    return {s.email: s for s in SubtaskModel.scan(consistent_read=True) if s.task_id == task_id}


def _all_pages(api: ApiClient, task_id: str, *, status: str = "failed", limit: int = 7) -> list[list[dict[str, Any]]]:
    pages, cursor = [], ""
    while True:
        query = f"status={status}&limit={limit}" + (f"&cursor={cursor}" if cursor else "")
        reply = api.get(f"/api/tasks/{task_id}/failures", user="alice", query=query)
        assert reply.status == 200, reply.body
        assert (reply.body["task_id"], reply.body["status"]) == (task_id, status)
        assert len(reply.body["failures"]) <= limit
        pages.append(reply.body["failures"])
        cursor = reply.body["cursor"]
        if cursor is None:
            return pages


def _state(task_id: str, user: str = "alice") -> tuple[Any, ...]:
    """Everything retry-failed may change: the task's counters, status and refunds, the user's
    quota, every subtask of the task."""
    stored = task(task_id)
    subtasks = sorted((s.contact_id, s.status, s.queue_key, int(s.attempts)) for s in _subtasks(task_id).values())
    return (
        stored.status,
        stored.counts.as_dict(),
        int(stored.quota_refunded),
        int(UserModel.get(user, consistent_read=True).remaining_quota),
        subtasks,
    )


# ---------------------------------------------------------------- the ledger


def test_failures_list_exactly_the_rejected_recipients_across_shards_page_by_page(api: ApiClient, sent: Sent) -> None:
    # When alice pages through the failures 7 at a time
    pages = _all_pages(api, sent.task_id)

    # Then every rejected recipient is there exactly once, nothing else, over several pages
    listed = [item for page in pages for item in page]
    assert len(pages) > 4
    assert sorted(item["email"] for item in listed) == sorted(REJECTED)
    assert len({item["contact_id"] for item in listed}) == len(REJECTED)
    # and the pages spanned several of the task's 16 shards
    subtasks = _subtasks(sent.task_id)
    assert len({subtasks[item["email"]].partition for item in listed}) > 8
    # each with its error's class and SES's message
    for item in listed:
        assert item["status"] == "failed" and item["may_have_been_sent"] is False
        assert item["error_class"] == "permanent"
        assert item["message"] == "MessageRejected: Email address is not verified."
        assert item["attempts"] == 1
        assert item["failed_at"] is not None and item["failed_at"].endswith("Z")
        assert item["contact_id"] == subtasks[item["email"]].contact_id


def test_unknown_recipients_are_listed_apart_as_maybe_sent(api: ApiClient, sent: Sent) -> None:
    listed = [item for page in _all_pages(api, sent.task_id, status="unknown", limit=2) for item in page]

    assert sorted(item["email"] for item in listed) == sorted(TIMING_OUT)
    assert all(item["status"] == "unknown" and item["may_have_been_sent"] is True for item in listed)
    assert all(item["error_class"] == "transient" and "ReadTimeoutError" in item["message"] for item in listed)


def test_default_page_lists_failed_only(api: ApiClient, sent: Sent) -> None:
    reply = api.get(f"/api/tasks/{sent.task_id}/failures", user="alice")

    assert reply.status == 200, reply.body
    assert reply.body["status"] == "failed"
    assert sorted(item["email"] for item in reply.body["failures"]) == sorted(REJECTED)  # 30 < 50 a page


def test_a_page_read_budget_hands_back_a_cursor_and_loses_nothing(
    api: ApiClient, sent: Sent, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a page may make only 3 Queries (of 16 shards)
    monkeypatch.setattr(failures, "MAX_READS_PER_PAGE", 3)

    pages = _all_pages(api, sent.task_id, limit=500)

    assert len(pages) >= 6
    assert sorted(item["email"] for page in pages for item in page) == sorted(REJECTED)


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("limit=0", "limit"),
        ("limit=501", "limit"),
        ("limit=ten", "limit"),
        ("cursor=%21%21", "cursor"),
        ("cursor=" + encode_cursor("16/"), "cursor"),  # shard 16 of 0..15
        ("cursor=" + encode_cursor("task_0#03 ct_1"), "cursor"),
        ("status=sent", "status"),
    ],
)
def test_bad_paging_or_status_is_a_422_naming_the_field(api: ApiClient, sent: Sent, query: str, field: str) -> None:
    reply = api.get(f"/api/tasks/{sent.task_id}/failures", user="alice", query=query)

    assert_rejected(reply, field)


def test_another_tenant_gets_404_and_changes_nothing_an_admin_may_read(api: ApiClient, sent: Sent) -> None:
    before = _state(sent.task_id)

    for reply in (
        api.get(f"/api/tasks/{sent.task_id}/failures", user="bob"),
        api.post(f"/api/tasks/{sent.task_id}/retry-failed", user="bob"),
        api.get("/api/tasks/task_000000000000000000000000/failures", user="alice"),
        api.post("/api/tasks/not%20an%20id/retry-failed", user="alice"),
    ):
        assert reply.status == 404, reply.body
        assert reply.body["error"] == "not_found"
    assert _state(sent.task_id) == before
    admin = api.get(f"/api/tasks/{sent.task_id}/failures", user="admin")
    assert admin.status == 200 and len(admin.body["failures"]) == len(REJECTED)


# ---------------------------------------------------------------- retry failed only


def test_retry_failed_requeues_only_failed_moves_quota_and_a_dispatcher_sends_them_once(
    api: ApiClient, world: World, sent: Sent, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given the campaign: 30 failed (refunded), 3 unknown and 7 sent of alice's 100
    monkeypatch.setattr(failures, "RETRY_CHUNK", 7)  # five transactions, not one
    before = _subtasks(sent.task_id)
    stored = task(sent.task_id)
    assert int(UserModel.get("alice").remaining_quota) == 100 - 10
    refunded = int(stored.quota_refunded)
    assert refunded == 30

    # When alice retries the failed ones
    reply = api.post(f"/api/tasks/{sent.task_id}/retry-failed", user="alice")

    # Then exactly those 30 are queued again on their service, due now, attempts reset
    assert reply.status == 200, reply.body
    assert reply.body["task_id"] == sent.task_id
    assert reply.body["requeued"] == 30
    assert reply.body["status"] == "queued"
    counts = reply.body["counts"]
    assert (counts["failed"], counts["queued"], counts["sent"], counts["unknown"]) == (0, 30, 7, 3)
    after = _subtasks(sent.task_id)
    for email, subtask in after.items():
        if email in REJECTED:
            assert (subtask.status, subtask.queue_key) == ("queued", f"svc#{sent.task_id}")
            assert (int(subtask.attempts), int(subtask.next_attempt_at), subtask.failed_at) == (0, 0, None)
            assert subtask.claim_owner is None
            assert subtask.error_class == "permanent"  # kept as the last error
        else:  # sent and unknown untouched
            assert subtask.serialize() == before[email].serialize()
    # and the quota moved back exactly: 30 units from alice, 30 fewer refunded on the task
    assert int(UserModel.get("alice").remaining_quota) == 100 - 10 - 30
    assert int(task(sent.task_id).quota_refunded) == refunded - 30
    # and the task is back in the dispatchers' index
    assert task(sent.task_id).active_partition == "active"

    # When SES now accepts them and the dispatcher runs
    sent.ses.rejected.clear()
    world.tick("svc", budget=30.0, ses=sent.ses)

    # Then every recipient but the unknown ones got exactly one email, the unknown ones none again
    assert {address: sent.ses.accepted[address] for address in REJECTED | ACCEPTED} == dict.fromkeys(
        REJECTED | ACCEPTED, 1
    )
    assert {address: sent.ses.calls[address] for address in TIMING_OUT} == dict.fromkeys(TIMING_OUT, 1)
    final = task(sent.task_id)
    assert final.status == "completed"
    assert (int(final.counts.sent), int(final.counts.failed), int(final.counts.unknown)) == (37, 0, 3)
    assert int(UserModel.get("alice").remaining_quota) == 100 - 40  # 37 sent and 3 maybe sent
    assert int(final.quota_refunded) == 0

    # When alice retries again: nothing is failed, nothing moves
    state = _state(sent.task_id)
    again = api.post(f"/api/tasks/{sent.task_id}/retry-failed", user="alice")
    assert again.status == 200, again.body
    assert (again.body["requeued"], again.body["status"]) == (0, "completed")
    assert _state(sent.task_id) == state


def test_retry_with_too_little_quota_is_409_and_changes_nothing(api: ApiClient, sent: Sent) -> None:
    # Given alice has 29 emails of quota left for 30 failed recipients
    UserModel("alice").update(actions=[UserModel.remaining_quota.set(29)])
    before = _state(sent.task_id)

    reply = api.post(f"/api/tasks/{sent.task_id}/retry-failed", user="alice")

    assert reply.status == 409, reply.body
    assert reply.body["error"] == "insufficient_quota"
    assert "30" in reply.body["message"] and "29" in reply.body["message"]
    assert _state(sent.task_id) == before


def test_retry_of_a_paused_task_requeues_and_it_stays_paused(api: ApiClient, world: World) -> None:
    # Given a task part sent: the first recipients failed, the rest still queued, then paused
    world.service("svc", sending_rate=1.0)
    task_id = world.campaign("alice", 12, ["svc"], quota=100)
    ses = ScriptedSes(rejected={_address(n) for n in range(12)})
    world.tick("svc", budget=3.5, ses=ses)
    stored = task(task_id)
    failed = int(stored.counts.failed)
    assert stored.status == "sending" and 0 < failed < 12
    assert api.post(f"/api/scheduler/tasks/{task_id}/pause", user="alice").status == 200

    reply = api.post(f"/api/tasks/{task_id}/retry-failed", user="alice")

    assert reply.status == 200, reply.body
    assert (reply.body["requeued"], reply.body["status"]) == (failed, "paused")
    assert (reply.body["counts"]["failed"], reply.body["counts"]["queued"]) == (0, 12)
    assert task(task_id).active_partition != "active"  # still out of the dispatchers' index


@pytest.mark.parametrize("status", ["cancelled", "planning", "rejected"])
def test_retry_of_a_task_that_cannot_send_is_409(api: ApiClient, sent: Sent, status: str) -> None:
    TaskModel(sent.task_id).update(actions=[TaskModel.status.set(status)])
    before = _state(sent.task_id)

    reply = api.post(f"/api/tasks/{sent.task_id}/retry-failed", user="alice")

    assert reply.status == 409, reply.body
    assert reply.body["error"] == "invalid_state"
    assert _state(sent.task_id) == before
    # the ledger stays readable
    assert api.get(f"/api/tasks/{sent.task_id}/failures", user="alice").status == 200


def test_retry_of_a_cancelled_task_through_the_api_is_409(api: ApiClient, world: World) -> None:
    world.service("svc", sending_rate=0.1)
    task_id = world.campaign("alice", 3, ["svc"], quota=10)
    assert api.post(f"/api/tasks/{task_id}/cancel", user="alice").status == 200

    reply = api.post(f"/api/tasks/{task_id}/retry-failed", user="alice")

    assert reply.status == 409, reply.body
    assert reply.body["error"] == "invalid_state"


# ---------------------------------------------------------------- concurrent retries


def test_concurrent_retries_requeue_each_subtask_once_and_take_its_quota_once(
    aws_server: Settings,  # noqa: F811 (the fixture imported above)
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given the sent campaign, on the single-threaded embedded AWS (atomic as DynamoDB is)
    clock = FakeClock()
    start_scheduler(clock.now())
    sent = _sent_campaign(World(aws_server, clock))
    user_before = int(UserModel.get("alice", consistent_read=True).remaining_quota)
    refunded_before = int(task(sent.task_id).quota_refunded)
    monkeypatch.setattr(failures, "RETRY_CHUNK", 4)  # many small transactions to interleave

    # When six retries of it race each other
    racers = 6
    start_together = threading.Barrier(racers)

    def retry() -> int:
        deps = failures.RetryDeps(clock=SystemClock())
        start_together.wait()
        return failures.retry_failed(Caller(user_id="alice", groups=frozenset()), sent.task_id, deps).requeued

    with ThreadPoolExecutor(max_workers=racers) as pool:
        requeued = list(pool.map(lambda _: retry(), range(racers)))

    # Then the 30 were queued again once in all, and their quota taken once
    assert sum(requeued) == len(REJECTED)
    subtasks = _subtasks(sent.task_id)
    assert sorted(email for email, s in subtasks.items() if s.status == "queued") == sorted(REJECTED)
    stored = task(sent.task_id)
    assert stored.status == "queued"
    assert (int(stored.counts.failed), int(stored.counts.queued)) == (0, len(REJECTED))
    assert int(UserModel.get("alice", consistent_read=True).remaining_quota) == user_before - len(REJECTED)
    assert int(stored.quota_refunded) == refunded_before - len(REJECTED)


def test_a_repeated_retry_with_the_same_idempotency_key_re_queues_once(api: ApiClient, sent: Sent) -> None:
    # Given a first retry whose reply the client lost, and a second send that failed them all again
    key = {"Idempotency-Key": "retry-1"}
    first = api.post(f"/api/tasks/{sent.task_id}/retry-failed", user="alice", headers=key)
    assert first.status == 200 and first.body["requeued"] == 30
    state = _state(sent.task_id)

    # When the client repeats the call with the same key, the first answer comes back, nothing moves
    again = api.post(f"/api/tasks/{sent.task_id}/retry-failed", user="alice", headers=key)
    assert (again.status, again.body) == (200, first.body)
    assert _state(sent.task_id) == state
