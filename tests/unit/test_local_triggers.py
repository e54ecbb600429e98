"""The local runner's stand-ins for AWS's own machinery, on in-process moto: EventBridge Scheduler
firing (rate, first fire, overlap, disable/enable, the schedules the template declares on functions)
and the SQS event source mapping (batches, partial failures, whole-batch failures)."""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from local_runner.functions import function_specs
from local_runner.template import (
    DeclaredSchedule,
    create_resources,
    declared_schedules,
    load_template,
    resolve_parameters,
)
from local_runner.triggers import (
    QueueMapping,
    QueueTrigger,
    ScheduleFirer,
    queue_mappings,
    random_second,
    rate_seconds,
)

EVENTS = Path(__file__).resolve().parents[2] / "events"

DISPATCHER_ARN = "arn:aws:lambda:us-east-1:123456789012:function:DispatcherFunction"


def AT_PERIOD_START(period: float) -> float:
    """Fires at the start of each period (the tests of period bookkeeping); AWS picks any second."""
    return 0.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class BlockingInvoke:
    """Records invocations; each one runs until released, like a long dispatcher tick."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.running = 0
        self.most_at_once = 0
        self.release = threading.Event()
        self._lock = threading.Lock()
        self.started = threading.Semaphore(0)

    def __call__(self, function: str, event: dict[str, Any]) -> None:
        with self._lock:
            self.calls.append((function, event))
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        self.started.release()
        self.release.wait(10)
        with self._lock:
            self.running -= 1


@pytest.fixture
def scheduler() -> Iterator[Any]:
    with mock_aws():
        client = boto3.client("scheduler", region_name="us-east-1")
        client.create_schedule_group(Name="dispatch")
        yield client


def _schedule(client: Any, name: str, *, state: str = "ENABLED", expression: str = "rate(1 minute)") -> None:
    client.create_schedule(
        Name=name,
        GroupName="dispatch",
        ScheduleExpression=expression,
        State=state,
        FlexibleTimeWindow={"Mode": "OFF"},
        Target={
            "Arn": DISPATCHER_ARN,
            "RoleArn": "arn:aws:iam::123456789012:role/r",
            "Input": json.dumps({"service_id": name}),
        },
    )


def _set_state(client: Any, name: str, state: str) -> None:
    current = client.get_schedule(Name=name, GroupName="dispatch")
    client.update_schedule(
        Name=name,
        GroupName="dispatch",
        ScheduleExpression=current["ScheduleExpression"],
        State=state,
        FlexibleTimeWindow={"Mode": "OFF"},
        Target=current["Target"],
    )


def _wait_started(invoke: BlockingInvoke, count: int) -> None:
    for _ in range(count):
        assert invoke.started.acquire(timeout=5), "an invocation did not start"


def test_rate_expressions() -> None:
    assert rate_seconds("rate(1 minute)") == 60
    assert rate_seconds("rate(5 minutes)") == 300
    assert rate_seconds("rate(2 hours)") == 7200
    assert rate_seconds("rate(1 day)") == 86400
    assert rate_seconds("cron(0 * * * ? *)") is None


def test_enabled_schedules_fire_at_once_then_every_period_and_overlap_a_long_invocation(scheduler: Any) -> None:
    _schedule(scheduler, "svc_a")
    _schedule(scheduler, "svc_off", state="DISABLED")
    invoke, clock = BlockingInvoke(), Clock()
    firer = ScheduleFirer(scheduler, function_specs(load_template()), invoke, clock=clock, offset=AT_PERIOD_START)
    try:
        firer.poll_once()  # first seen enabled: fires now
        _wait_started(invoke, 1)
        clock.now += 59
        firer.poll_once()  # not yet due
        clock.now += 1
        firer.poll_once()  # due, while the first invocation still runs
        _wait_started(invoke, 1)
        assert invoke.calls == [("DispatcherFunction", {"service_id": "svc_a"})] * 2
        assert invoke.most_at_once == 2
    finally:
        invoke.release.set()
    assert firer.wait_for_invocations(5)


def test_a_schedule_enabled_again_fires_at_once(scheduler: Any) -> None:
    _schedule(scheduler, "svc_a")
    invoke, clock = BlockingInvoke(), Clock()
    invoke.release.set()
    firer = ScheduleFirer(scheduler, function_specs(load_template()), invoke, clock=clock, offset=AT_PERIOD_START)
    firer.poll_once()
    _set_state(scheduler, "svc_a", "DISABLED")
    clock.now += 120
    firer.poll_once()  # disabled: nothing, however overdue
    _set_state(scheduler, "svc_a", "ENABLED")
    clock.now += 1
    firer.poll_once()
    _wait_started(invoke, 2)
    assert len(invoke.calls) == 2
    assert firer.wait_for_invocations(5)


def test_schedules_it_cannot_fire_are_skipped(scheduler: Any) -> None:
    _schedule(scheduler, "svc_cron", expression="cron(0 * * * ? *)")
    invoke = BlockingInvoke()
    invoke.release.set()
    firer = ScheduleFirer(scheduler, function_specs(load_template()), invoke, clock=Clock(), offset=AT_PERIOD_START)
    firer.poll_once()
    assert firer.fired == 0
    assert firer.wait_for_invocations(5) and invoke.calls == []


def test_a_schedule_with_unreadable_input_is_skipped_and_the_others_still_fire(scheduler: Any) -> None:
    _schedule(scheduler, "svc_a")
    scheduler.create_schedule(
        Name="broken",
        GroupName="dispatch",
        ScheduleExpression="rate(1 minute)",
        State="ENABLED",
        FlexibleTimeWindow={"Mode": "OFF"},
        Target={"Arn": DISPATCHER_ARN, "RoleArn": "arn:aws:iam::123456789012:role/r", "Input": "{not json"},
    )
    invoke = BlockingInvoke()
    invoke.release.set()
    firer = ScheduleFirer(scheduler, function_specs(load_template()), invoke, clock=Clock(), offset=AT_PERIOD_START)
    firer.poll_once()
    assert firer.wait_for_invocations(5)
    assert invoke.calls == [("DispatcherFunction", {"service_id": "svc_a"})]


def test_more_schedules_than_one_page_all_fire(scheduler: Any) -> None:
    for number in range(60):  # moto pages ListSchedules by 50
        _schedule(scheduler, f"svc_{number:02d}")
    invoke = BlockingInvoke()
    invoke.release.set()
    firer = ScheduleFirer(scheduler, function_specs(load_template()), invoke, clock=Clock(), offset=AT_PERIOD_START)
    firer.poll_once()
    assert firer.wait_for_invocations(10)
    assert sorted(event["service_id"] for _, event in invoke.calls) == [f"svc_{n:02d}" for n in range(60)]


def test_fires_keep_to_their_period_however_late_the_poll(scheduler: Any) -> None:
    _schedule(scheduler, "svc_a")
    invoke, clock = BlockingInvoke(), Clock()
    invoke.release.set()
    firer = ScheduleFirer(scheduler, function_specs(load_template()), invoke, clock=clock, offset=AT_PERIOD_START)
    firer.poll_once()  # t = 0: fires; due again at 60
    clock.now += 60.7
    firer.poll_once()  # polled 0.7 s late: fires; due again at 120, not 120.7
    clock.now += 59.3
    firer.poll_once()  # t = 120
    assert firer.fired == 3
    assert firer.wait_for_invocations(5)


def test_each_period_fires_once_at_the_second_its_offset_picks(scheduler: Any) -> None:
    """As in AWS (60-second precision): consecutive fires of a one-minute rate can be 1 s apart
    (late in one minute, early in the next) or 119 s apart (early, then late)."""
    _schedule(scheduler, "svc_a")
    invoke, clock = BlockingInvoke(), Clock()
    invoke.release.set()
    offsets = iter([59.0, 0.0, 0.0, 59.0, 30.0])
    firer = ScheduleFirer(
        scheduler, function_specs(load_template()), invoke, clock=clock, offset=lambda p: next(offsets)
    )
    fired_at = []
    for _ in range(240):
        before = firer.fired
        firer.poll_once()
        if firer.fired > before:
            fired_at.append(clock.now - 1000.0)
        clock.now += 1
    assert fired_at == [59.0, 60.0, 120.0, 239.0]
    assert [b - a for a, b in itertools.pairwise(fired_at)] == [1.0, 60.0, 119.0]
    assert firer.wait_for_invocations(5)


def test_the_default_offset_is_anywhere_in_the_period() -> None:
    picks = [random_second(60.0) for _ in range(2000)]
    assert all(0.0 <= pick < 60.0 for pick in picks)
    assert min(picks) < 5.0 and max(picks) > 55.0  # spread over the minute, not at its start


def test_the_template_wake_up_mapping_runs_batches_concurrently() -> None:
    with mock_aws():
        created = create_resources(boto3.Session(region_name="us-east-1"))
    template = load_template()
    mappings = {mapping.function: mapping for mapping in queue_mappings(template, created)}
    wake = mappings["DispatcherFunction"]
    assert wake.batch_size == 1
    assert wake.concurrency == int(template["Parameters"]["DispatchWakeConcurrency"]["Default"]) >= 2
    assert mappings["PlannerFunction"].concurrency == 1  # conditional ScalingConfig: one batch at a time locally


def test_the_template_declares_the_health_check_schedule_with_the_sample_events_input() -> None:
    (health,) = [schedule for schedule in declared_schedules(load_template()) if schedule.function == "HealthFunction"]
    # HealthCheckIntervalMinutes' default, through the template's !If and !Sub
    assert health.expression == "rate(60 minutes)" and health.enabled
    assert health.event == json.loads((EVENTS / "health_check.json").read_text())


def test_parameters_and_conditions_resolve_as_cloudformation_would_with_the_defaults() -> None:
    template = {
        "Parameters": {"Minutes": {"Type": "Number", "Default": 1}, "Name": {"Type": "String"}},
        "Conditions": {
            "EveryMinute": {"Fn::Equals": [{"Ref": "Minutes"}, "1"]},
            "NotEveryMinute": {"Fn::Not": [{"Condition": "EveryMinute"}]},
        },
    }
    expression = {"Fn::If": ["EveryMinute", "rate(1 minute)", {"Fn::Sub": "rate(${Minutes} minutes)"}]}
    assert resolve_parameters(expression, template) == "rate(1 minute)"
    template["Parameters"]["Minutes"]["Default"] = 5
    assert resolve_parameters(expression, template) == "rate(5 minutes)"
    assert resolve_parameters({"Fn::If": ["NotEveryMinute", "yes", "no"]}, template) == "yes"
    assert resolve_parameters({"Fn::Sub": "${AWS::Region}/${Minutes}"}, template) == "us-east-1/5"
    assert resolve_parameters({"Fn::Sub": "x-${Name}"}, template) is None  # no default: unknown locally
    assert resolve_parameters({"Fn::GetAtt": ["Queue", "Arn"]}, template) is None


def test_a_schedule_the_template_declares_fires_every_period_without_any_scheduler_schedule(scheduler: Any) -> None:
    """The health check's schedule is created by CloudFormation in AWS, never through the API: the
    runner fires it from the template, here every 30 s instead of its hour, from one period after
    its start (locally the stack is created when it is first used)."""
    invoke, clock = BlockingInvoke(), Clock()
    invoke.release.set()
    declared = [schedule for schedule in declared_schedules(load_template()) if schedule.function == "HealthFunction"]
    firer = ScheduleFirer(
        scheduler,
        function_specs(load_template()),
        invoke,
        clock=clock,
        offset=AT_PERIOD_START,
        declared=declared,
        template_period=30.0,
    )
    fired_at = []
    for _ in range(91):
        before = firer.fired
        firer.poll_once()
        if firer.fired > before:
            fired_at.append(clock.now - 1000.0)
        clock.now += 1
    assert firer.wait_for_invocations(5)
    assert fired_at == [30.0, 60.0, 90.0]
    assert invoke.calls == [("HealthFunction", {"trigger": "health_check"})] * 3


def test_declared_schedules_keep_their_rate_unless_told_and_disabled_or_cron_ones_never_fire(scheduler: Any) -> None:
    invoke, clock = BlockingInvoke(), Clock()
    invoke.release.set()
    declared = [
        DeclaredSchedule("HealthFunction", "HealthFunction.Hourly", "rate(1 hour)", {"n": 1}, enabled=True),
        DeclaredSchedule("HealthFunction", "HealthFunction.Off", "rate(1 minute)", {"n": 2}, enabled=False),
        DeclaredSchedule("HealthFunction", "HealthFunction.Cron", "cron(0 * * * ? *)", {"n": 3}, enabled=True),
        DeclaredSchedule("NoSuchFunction", "NoSuchFunction.Tick", "rate(1 minute)", {"n": 4}, enabled=True),
    ]
    spans: list[float] = []

    def offset(span: float) -> float:
        spans.append(span)
        return 0.0

    firer = ScheduleFirer(
        scheduler, function_specs(load_template()), invoke, clock=clock, offset=offset, declared=declared
    )
    for _ in range(5):
        firer.poll_once()
        clock.now += 1800  # half an hour
    assert firer.wait_for_invocations(5)
    assert invoke.calls == [("HealthFunction", {"n": 1})] * 2  # after one hour and after two
    assert set(spans) == {60.0}  # each fire within the first minute of its hour, as Scheduler's precision


# ------------------------------------------------------------------ SQS


@pytest.fixture
def queue() -> Iterator[tuple[Any, str, str]]:
    with mock_aws():
        sqs = boto3.client("sqs", region_name="us-east-1")
        url = sqs.create_queue(QueueName="jobs", Attributes={"VisibilityTimeout": "300"})["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        yield sqs, url, arn


def _counts(sqs: Any, url: str) -> tuple[int, int]:
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"]), int(attributes["ApproximateNumberOfMessagesNotVisible"])


def test_batches_are_delivered_and_only_reported_failures_stay(queue: tuple[Any, str, str]) -> None:
    sqs, url, arn = queue
    for number in range(3):
        sqs.send_message(QueueUrl=url, MessageBody=json.dumps({"n": number}))
    batches: list[list[dict[str, Any]]] = []

    def handler(function: str, event: dict[str, Any]) -> dict[str, Any]:
        batches.append(event["Records"])
        failed = [r["messageId"] for r in event["Records"] if json.loads(r["body"])["n"] == 1]
        return {"batchItemFailures": [{"itemIdentifier": message_id} for message_id in failed]}

    trigger = QueueTrigger(sqs, QueueMapping("PlannerFunction", url, arn, 2, True), handler)
    while trigger.poll_once():
        pass

    assert [len(batch) for batch in batches] == [2, 1]
    record = batches[0][0]
    assert record["eventSource"] == "aws:sqs" and record["eventSourceARN"] == arn
    assert record["attributes"]["ApproximateReceiveCount"] == "1"
    assert _counts(sqs, url) == (0, 1)  # the failed one waits out its visibility timeout


def test_a_failed_invocation_returns_its_whole_batch(queue: tuple[Any, str, str]) -> None:
    sqs, url, arn = queue
    sqs.send_message(QueueUrl=url, MessageBody="{}")

    def crash(function: str, event: dict[str, Any]) -> None:
        raise RuntimeError("boom")

    trigger = QueueTrigger(sqs, QueueMapping("PlannerFunction", url, arn, 10, True), crash)
    assert trigger.poll_once() is True
    assert _counts(sqs, url) == (0, 1)


def test_a_concurrent_mapping_runs_long_batches_side_by_side(queue: tuple[Any, str, str]) -> None:
    """The dispatcher's wake-up queue: one long invocation per service, several services at once."""
    sqs, url, arn = queue
    for number in range(3):
        sqs.send_message(QueueUrl=url, MessageBody=json.dumps({"n": number}))
    invoke = BlockingInvoke()
    trigger = QueueTrigger(sqs, QueueMapping("DispatcherFunction", url, arn, 1, False, concurrency=2), invoke)
    try:
        assert trigger.poll_once() and trigger.poll_once()
        _wait_started(invoke, 2)
        assert trigger.poll_once() is False  # both slots busy: the third waits in the queue
        assert invoke.most_at_once == 2 and _counts(sqs, url) == (1, 2)
    finally:
        invoke.release.set()
    assert trigger.wait_for_invocations(5)
    while trigger.poll_once():
        pass
    assert trigger.wait_for_invocations(5)
    assert len(invoke.calls) == 3 and _counts(sqs, url) == (0, 0)
