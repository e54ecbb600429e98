"""Routing by capacity and failover: a service that cannot send hands its queued work to its users'
other services within its own tick, or its tasks wait with a reason and move on by themselves."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from core.dispatch.dispatcher import StopReason
from core.settings import Settings
from core.storage.models import EmailServiceModel, SubtaskModel, TaskModel
from tests.conftest import FakeClock
from tests.support.dispatching import World, start_scheduler, task

DAY = 86_400


class RecordingSes:
    """A real sesv2 client on the embedded server that remembers who it mailed through which service
    and, once `pause_after` emails went through, answers as SES does for a paused account."""

    sent: list[tuple[str, str]] = []  # (service, recipient), shared by every service's client

    def __init__(self, service_id: str, pause_after: int | None = None) -> None:
        self.service_id = service_id
        self.pause_after = pause_after
        self.client = boto3.client("sesv2", config=Config(retries={"max_attempts": 1}))
        self.lock = threading.Lock()

    def send_email(self, **request: Any) -> dict[str, Any]:
        with self.lock:
            mine = sum(1 for service, _ in RecordingSes.sent if service == self.service_id)
            if self.pause_after is not None and mine >= self.pause_after:
                raise ClientError(
                    {"Error": {"Code": "SendingPausedException", "Message": "Sending is paused for this account."}},
                    "SendEmail",
                )
            (recipient,) = request["Destination"]["ToAddresses"]
            RecordingSes.sent.append((self.service_id, recipient))
        return dict(self.client.send_email(**request))


@pytest.fixture
def world(aws: Settings, clock: FakeClock) -> World:
    start_scheduler(clock.now())
    RecordingSes.sent = []
    return World(aws, clock)


def _on(service_id: str, task_id: str) -> list[SubtaskModel]:
    return [s for s in SubtaskModel.scan() if s.task_id == task_id and s.service_id == service_id]


def _queued_on(service_id: str) -> int:
    return sum(1 for s in SubtaskModel.scan() if s.service_id == service_id and s.status == "queued")


def test_a_paused_account_hands_its_work_to_the_other_service_within_its_tick(world: World) -> None:
    world.service("svc-a", sending_rate=1.0)
    world.service("svc-b", sending_rate=1.0)
    alice = world.campaign("alice", 40, ["svc-a", "svc-b"])
    bob = world.campaign("bob", 40, ["svc-a", "svc-b"])
    assert _on("svc-a", alice) and _on("svc-b", alice)  # capacity routing uses both

    # svc-a's account is paused after 6 emails: its tick stops and fails over at once.
    queued_on_a = _queued_on("svc-a")
    report = world.tick("svc-a", budget=50.0, ses=RecordingSes("svc-a", pause_after=6))
    assert report.stop_reason is StopReason.ACCOUNT_PROBLEM and report.sent == 6
    assert EmailServiceModel.get("svc-a").is_healthy is False
    assert report.failed_over == queued_on_a - 6 and _queued_on("svc-a") == 0
    for task_id in (alice, bob):
        assert "svc-b" in task(task_id).plan.routing
        assert all(s.attempts == 0 for s in SubtaskModel.scan() if s.task_id == task_id)  # no attempt spent

    # svc-b sends the rest; users alternate (one pick per user per round) while both have work.
    b = RecordingSes("svc-b")
    world.tick("svc-b", budget=200.0, ses=b)
    for task_id in (alice, bob):
        final = task(task_id)
        assert (final.status, final.counts.sent, final.counts.queued) == ("completed", 40, 0)
    recipients = Counter(recipient for _, recipient in RecordingSes.sent)
    # alice's and bob's contacts share addresses: each address once per user, 80 SES calls for 80 emails
    assert len(RecordingSes.sent) == 80 and len(recipients) == 40 and set(recipients.values()) == {2}
    order = [
        s.user_id
        for s in sorted((s for s in SubtaskModel.scan() if s.service_id == "svc-b"), key=lambda s: float(s.sent_at))
    ]
    both = min(order.count("alice"), order.count("bob"))
    for end in range(1, 2 * both):
        prefix = order[:end]
        assert abs(prefix.count("alice") - prefix.count("bob")) <= 1, "fairness bound"

    # svc-a healthy again (the health check's recovery): new work uses it again.
    EmailServiceModel("svc-a").update(actions=[EmailServiceModel.is_healthy.set(True)])
    again = world.campaign("alice", 20, ["svc-a", "svc-b"])
    assert _on("svc-a", again)
    assert world.tick("svc-a", budget=30.0, ses=RecordingSes("svc-a")).sent == len(_on("svc-a", again))


def test_a_service_out_of_daily_quota_hands_its_queued_work_to_the_users_other_service(
    world: World, clock: FakeClock
) -> None:
    world.service("svc-a", sending_rate=1.0, daily_quota=1000)
    world.service("svc-b", sending_rate=1.0, daily_quota=1000)
    task_id = world.campaign("alice", 30, ["svc-a", "svc-b"])
    on_a = len(_on("svc-a", task_id))
    assert on_a >= 10
    EmailServiceModel("svc-a").update(actions=[EmailServiceModel.daily_quota.set(5)])  # an admin lowers it

    report = world.tick("svc-a", budget=50.0, ses=RecordingSes("svc-a"))
    assert report.stop_reason is StopReason.DAILY_QUOTA
    assert report.sent == 5 and report.failed_over == on_a - 5 and _queued_on("svc-a") == 0

    world.tick("svc-b", budget=60.0, ses=RecordingSes("svc-b"))
    final = task(task_id)
    assert (final.status, final.counts.sent) == ("completed", 30)
    assert Counter(service for service, _ in RecordingSes.sent) == {"svc-a": 5, "svc-b": 25}
    assert len({recipient for _, recipient in RecordingSes.sent}) == 30


def test_with_no_other_service_the_task_waits_and_moves_on_when_the_day_turns(world: World, clock: FakeClock) -> None:
    world.service("svc-a", sending_rate=1.0, daily_quota=5)
    task_id = world.campaign("alice", 12, ["svc-a"])

    report = world.tick("svc-a", budget=50.0, ses=RecordingSes("svc-a"))
    assert report.sent == 5 and report.stop_reason is StopReason.DAILY_QUOTA
    waiting = task(task_id)
    assert (waiting.status, waiting.reason) == ("waiting", "daily_quota_exhausted:svc-a")
    assert world.tick("svc-a", budget=50.0).sent == 0  # still the same UTC day

    clock.advance(DAY)  # the next UTC day: its tick sends again and the task moves on
    assert world.tick("svc-a", budget=50.0, ses=RecordingSes("svc-a")).sent == 5
    moving = task(task_id)
    assert (moving.status, moving.reason, moving.counts.sent) == ("waiting", "daily_quota_exhausted:svc-a", 10)
    clock.advance(DAY)
    world.tick("svc-a", budget=50.0, ses=RecordingSes("svc-a"))
    done = task(task_id)
    assert (done.status, done.counts.sent, done.reason) == ("completed", 12, None)


def test_an_unhealthy_service_with_no_alternative_makes_the_task_wait_until_it_recovers(world: World) -> None:
    world.service("svc-a", sending_rate=1.0)
    task_id = world.campaign("alice", 4, ["svc-a"])
    EmailServiceModel("svc-a").update(
        actions=[EmailServiceModel.is_healthy.set(False), EmailServiceModel.health_reason.set("sending_paused")]
    )

    assert world.tick("svc-a", budget=30.0).stop_reason is StopReason.SERVICE_UNAVAILABLE
    assert (task(task_id).status, task(task_id).reason) == ("waiting", "no_healthy_service")

    EmailServiceModel("svc-a").update(actions=[EmailServiceModel.is_healthy.set(True)])
    assert world.tick("svc-a", budget=30.0).sent == 4
    assert (task(task_id).status, task(task_id).reason) == ("completed", None)


def test_a_task_planned_while_no_service_can_send_waits_with_the_reason(world: World) -> None:
    world.service("svc-a", sending_rate=1.0)
    EmailServiceModel("svc-a").update(actions=[EmailServiceModel.is_healthy.set(False)])
    task_id = world.campaign("alice", 3, ["svc-a"])

    planned = TaskModel.get(task_id)
    assert (planned.status, planned.reason, planned.counts.queued) == ("waiting", "no_healthy_service", 3)
    assert planned.active_partition == "active"  # still picked by its dispatchers once it can send
