"""Each class of SES failure ends in the state the error table names (SES answers stubbed)."""

from __future__ import annotations

import itertools
import time

import boto3
import pytest
from botocore.stub import Stubber

from core.dispatch.dispatcher import StopReason
from core.settings import Settings
from core.storage.models import EmailServiceModel, SubtaskModel, TemplateModel, UserModel
from tests.conftest import FakeClock
from tests.support.dispatching import World, sent_subtasks, start_scheduler, task

# ~2 s per urlize of a megabyte, twenty times: ~40 s per email unless the render budget stops it.
SLOW_HTML = "{% set x = 'a ' * 499999 %}{% for i in range(20) %}{{ x|urlize|length }}{% endfor %}"


@pytest.fixture
def world(aws: Settings, clock: FakeClock) -> World:
    start_scheduler(clock.now())
    return World(aws, clock)


def _ses_answering(*answers: tuple[str, str, int] | str) -> tuple[object, Stubber]:
    """A real sesv2 client whose SendEmail answers are, in order, errors (code, message, status)
    or message ids."""
    client = boto3.client("sesv2")
    stubber = Stubber(client)
    for answer in answers:
        if isinstance(answer, str):
            stubber.add_response("send_email", {"MessageId": answer})
        else:
            code, message, status = answer
            stubber.add_client_error(
                "send_email", service_error_code=code, service_message=message, http_status_code=status
            )
    stubber.activate()
    return client, stubber


def _only_subtask() -> SubtaskModel:
    (subtask,) = list(SubtaskModel.scan())
    return subtask


@pytest.mark.parametrize(
    ("error", "status", "attempts", "stop", "healthy", "refunded"),
    [
        (("TooManyRequestsException", "Maximum sending rate exceeded.", 429), "queued", 0, None, True, 0),
        (("ThrottlingException", "Rate exceeded", 400), "queued", 0, None, True, 0),
        (
            ("TooManyRequestsException", "Daily message quota exceeded.", 429),
            "queued",
            0,
            StopReason.DAILY_QUOTA,
            True,
            0,
        ),
        (("InternalFailure", "We encountered an internal error", 500), "queued", 1, None, True, 0),
        (("MessageRejected", "Email address is not verified.", 400), "failed", 1, None, True, 1),
        (("BadRequestException", "Invalid address", 400), "failed", 1, None, True, 1),
        (
            ("SendingPausedException", "Sending is paused for this account.", 400),
            "queued",
            0,
            StopReason.ACCOUNT_PROBLEM,
            False,
            0,
        ),
        (("AccountSuspendedException", "Account suspended.", 400), "queued", 0, StopReason.ACCOUNT_PROBLEM, False, 0),
        (
            ("MailFromDomainNotVerifiedException", "MAIL FROM not verified.", 400),
            "queued",
            0,
            StopReason.ACCOUNT_PROBLEM,
            False,
            0,
        ),
    ],
)
def test_error_class_ends_in_its_state(
    world: World,
    clock: FakeClock,
    error: tuple[str, str, int],
    status: str,
    attempts: int,
    stop: StopReason | None,
    healthy: bool,
    refunded: int,
) -> None:
    world.service("svc", sending_rate=1.0)
    task_id = world.campaign("alice", 1, ["svc"], quota=10)
    ses, stubber = _ses_answering(error)

    report = world.tick("svc", budget=0.5, ses=ses)

    subtask = _only_subtask()
    assert (subtask.status, int(subtask.attempts)) == (status, attempts)
    assert subtask.error_class is not None
    if stop is not None:
        assert report.stop_reason is stop
    assert EmailServiceModel.get("svc").is_healthy is healthy
    assert UserModel.get("alice").remaining_quota == 10 - 1 + refunded
    if status == "queued":
        assert subtask.queue_key == f"svc#{task_id}" and subtask.claim_owner is None
    if status == "failed":
        assert task(task_id).counts.failed == 1
    stubber.assert_no_pending_responses()


def test_transient_twice_then_success_is_sent_with_two_attempts_retry_delay_apart(
    world: World, clock: FakeClock, aws: Settings
) -> None:
    world.service("svc", sending_rate=1.0)
    task_id = world.campaign("alice", 1, ["svc"])
    failure = ("ServiceUnavailable", "Service unavailable", 503)
    ses, stubber = _ses_answering(failure, failure, "msg-3")

    tries = []
    for _ in range(10):
        report = world.tick("svc", budget=5.0, ses=ses)
        tries += report.send_times
        clock.advance(20)
        if task(task_id).status == "completed":
            break

    subtask = _only_subtask()
    assert (subtask.status, int(subtask.attempts), subtask.message_id) == ("sent", 2, "msg-3")
    assert len(tries) == 3
    assert all(later - earlier >= aws.retry_delay_seconds for earlier, later in itertools.pairwise(tries))
    stubber.assert_no_pending_responses()


def test_transient_failures_beyond_max_retries_fail_and_refund(world: World, clock: FakeClock, aws: Settings) -> None:
    world.service("svc", sending_rate=1.0)
    task_id = world.campaign("alice", 1, ["svc"], quota=5)
    failure = ("InternalFailure", "boom", 500)
    ses, _ = _ses_answering(*[failure] * (aws.max_retries + 1))

    for _ in range(aws.max_retries + 1):
        world.tick("svc", budget=5.0, ses=ses)
        clock.advance(aws.retry_delay_seconds)

    subtask = _only_subtask()
    assert (subtask.status, int(subtask.attempts)) == ("failed", aws.max_retries + 1)
    assert UserModel.get("alice").remaining_quota == 5
    assert task(task_id).status == "completed"


def test_read_timeout_may_have_sent_so_it_becomes_unknown_not_retried(world: World, clock: FakeClock) -> None:
    from botocore.exceptions import ReadTimeoutError

    world.service("svc", sending_rate=1.0)
    task_id = world.campaign("alice", 1, ["svc"], quota=10)

    class TimingOutSes:
        def send_email(self, **request: object) -> dict[str, str]:
            raise ReadTimeoutError(endpoint_url="https://email.us-east-1.amazonaws.com")

    world.tick("svc", budget=0.5, ses=TimingOutSes())

    subtask = _only_subtask()
    assert subtask.status == "unknown" and subtask.queue_key is None
    final = task(task_id)
    assert (final.counts.unknown, final.status) == (1, "completed")
    assert UserModel.get("alice").remaining_quota == 9  # possibly sent: not refunded


def test_template_over_the_render_budget_fails_its_recipients_and_other_users_still_send(
    world: World, clock: FakeClock
) -> None:
    # Given alice's template (stored before budgets were checked on save) takes ~40 s per email,
    # and bob's is ordinary; both send through the same service
    world.service("svc", sending_rate=0.1)
    slow_task = world.campaign("alice", 3, ["svc"], quota=10)
    TemplateModel.get("alice", "tpl_1").update(actions=[TemplateModel.html.set(SLOW_HTML)])
    fine_task = world.campaign("bob", 3, ["svc"])
    started = time.monotonic()
    # When
    report = world.tick("svc", budget=30.0)
    # Then the tick was held about one render budget (0.2 s) per slow email, not ~40 s: what is
    # left of the bound is the tick's own work against moto on a loaded machine
    assert time.monotonic() - started < 10.0
    failed = [subtask for subtask in SubtaskModel.scan() if subtask.task_id == slow_task]
    assert [(subtask.status, subtask.error_class) for subtask in failed] == [("failed", "render_timeout")] * 3
    assert all("render budget" in str(subtask.error) for subtask in failed)
    assert len(sent_subtasks(fine_task)) == 3
    assert (report.sent, report.failed) == (3, 3)
    assert UserModel.get("alice").remaining_quota == 10  # every unit reserved for alice came back
    assert (task(slow_task).status, int(task(slow_task).counts.failed)) == ("completed", 3)
    assert task(fine_task).status == "completed"


def test_template_that_fails_to_render_for_other_reasons_is_still_a_render_error(
    world: World, clock: FakeClock
) -> None:
    # Given
    world.service("svc", sending_rate=1.0)
    task_id = world.campaign("alice", 1, ["svc"], quota=10)
    TemplateModel.get("alice", "tpl_1").update(actions=[TemplateModel.html.set("{{ no_such_attribute }}")])
    # When
    world.tick("svc", budget=5.0)
    # Then
    subtask = _only_subtask()
    assert (subtask.status, subtask.error_class) == ("failed", "render")
    assert UserModel.get("alice").remaining_quota == 10
    assert task(task_id).status == "completed"
