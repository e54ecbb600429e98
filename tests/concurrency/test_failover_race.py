"""Failover racing live dispatchers on the single-threaded embedded server: while service B's
dispatchers send, service A's account is paused mid-campaign and A's tick moves its queued work to B;
a second invocation of A and a second of B overlap them. Nobody gets two emails and every email of
the campaign is sent exactly once."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

from botocore.exceptions import ClientError

from core.clock import SystemClock
from core.dispatch.dispatcher import DispatchReport, StopReason, dispatch_service
from core.settings import Settings
from core.storage.models import EmailServiceModel, SubtaskModel, TaskModel
from local_runner.moto_server import EmbeddedAws
from tests.concurrency.test_dispatcher_crashes import Clients, _by_status, _campaign, _deps, _recipient
from tests.support.dispatching import World, start_scheduler

RATE = 0.01
RECIPIENTS = 80  # per user; every address distinct


class PausingSes:
    """Passes SendEmail through until `after` calls went through, then answers as SES does for a
    paused account."""

    def __init__(self, client: Any, after: int) -> None:
        self.client = client
        self.after = after
        self.calls = 0
        self.lock = threading.Lock()

    def send_email(self, **request: Any) -> Any:
        with self.lock:
            self.calls += 1
            if self.calls > self.after:
                error = {"Error": {"Code": "SendingPausedException", "Message": "Sending is paused."}}
                raise ClientError(error, "SendEmail")  # type: ignore[arg-type]
        return self.client.send_email(**request)


def test_a_service_failing_over_while_the_other_sends_never_sends_twice(
    embedded_aws: EmbeddedAws, aws_server: Settings
) -> None:
    clock = SystemClock()
    start_scheduler(clock.now())
    world = World(aws_server, clock)
    world.service("svc_a", sending_rate=RATE)
    world.service("svc_b", sending_rate=RATE * 4)  # B is still sending its own when A's work arrives
    tasks = [
        _campaign(world, "ann", ["svc_a", "svc_b"], RECIPIENTS, 0),
        _campaign(world, "bob", ["svc_a", "svc_b"], RECIPIENTS, 1000),
    ]
    on_a = sum(1 for s in SubtaskModel.scan(consistent_read=True) if s.service_id == "svc_a")
    assert on_a > 20

    reports: dict[str, DispatchReport] = {}
    errors: list[BaseException] = []

    def run(name: str, service_id: str, ses: Any, budget: float) -> None:
        made = Clients.make()
        clients = Clients(ses(made.ses), made.dynamodb, made.sqs) if ses else made
        try:
            reports[name] = dispatch_service(service_id, _deps(aws_server, clients, owner=name, budget=budget))
        except BaseException as error:  # reported below
            errors.append(error)

    # Whichever of A's two invocations takes A's lease sends through A's account, which pauses.
    account_a = PausingSes(Clients.make().ses, after=10)
    threads = [
        threading.Thread(target=run, args=("b1", "svc_b", None, 30.0)),
        threading.Thread(target=run, args=("a1", "svc_a", lambda _: account_a, 4.0)),
        threading.Thread(target=run, args=("a2", "svc_a", lambda _: account_a, 4.0)),
        threading.Thread(target=run, args=("b2", "svc_b", None, 30.0)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    paused = [r for r in reports.values() if r.stop_reason is StopReason.ACCOUNT_PROBLEM]
    assert len(paused) == 1 and paused[0].failed_over > 0
    assert EmailServiceModel.get("svc_a").is_healthy is False

    # B's invocation that was sending when the work moved sent it too (it read the tasks' queues again,
    # requeue_seq), and every email went out exactly once.
    b_sent = sum(r.sent for name, r in reports.items() if name.startswith("b"))
    assert b_sent == 2 * RECIPIENTS - 10
    subtasks = list(SubtaskModel.scan(consistent_read=True))
    assert dict(_by_status(subtasks)) == {"sent": 2 * RECIPIENTS}
    recipients = Counter(_recipient(message) for message in embedded_aws.sent_raw_messages())
    assert len(recipients) == 2 * RECIPIENTS and set(recipients.values()) == {1}
    assert all(s.attempts == 0 for s in subtasks)  # failing over spent no attempt
    for task_id in tasks:
        final = TaskModel.get(task_id, consistent_read=True)
        assert (final.status, final.counts.sent, final.counts.queued) == ("completed", RECIPIENTS, 0)
