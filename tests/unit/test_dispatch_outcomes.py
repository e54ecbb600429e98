"""The outcome table (core.dispatch.outcomes) and the SES sender's in-flight pool
(core.dispatch.sender), without AWS."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from core.dispatch.outcomes import MAY_HAVE_BEEN_SENT, OUTCOMES, SENT, Move, ServiceEffect, outcome_of
from core.dispatch.send_errors import SendError, SendErrorClass
from core.dispatch.sender import SesSender, send_request
from core.storage.models import SubtaskModel


def test_every_error_class_has_an_outcome_and_only_an_accepted_or_maybe_sent_email_uses_its_quota() -> None:
    assert set(OUTCOMES) == set(SendErrorClass)
    assert all(not outcome.quota_used for outcome in OUTCOMES.values())
    assert SENT.quota_used and MAY_HAVE_BEEN_SENT.quota_used
    assert outcome_of(None) is SENT


@pytest.mark.parametrize(
    ("error_class", "move", "effect"),
    [
        (SendErrorClass.THROTTLED, Move.REQUEUE, ServiceEffect.BACK_OFF),
        (SendErrorClass.DAILY_QUOTA, Move.REQUEUE, ServiceEffect.STOP_FOR_THE_DAY),
        (SendErrorClass.ACCOUNT, Move.REQUEUE, ServiceEffect.MARK_UNHEALTHY),
        (SendErrorClass.TRANSIENT, Move.RETRY, ServiceEffect.NONE),
        (SendErrorClass.PERMANENT, Move.FAIL, ServiceEffect.NONE),
    ],
)
def test_each_error_class_moves_its_subtask_and_service(
    error_class: SendErrorClass, move: Move, effect: ServiceEffect
) -> None:
    outcome = outcome_of(SendError(error_class, "Code", "message"))
    assert (outcome.move, outcome.service) == (move, effect)


def test_an_error_after_which_ses_may_have_the_email_is_unknown_whatever_its_class() -> None:
    timeout = SendError(SendErrorClass.TRANSIENT, "ReadTimeoutError", "read timed out", may_have_been_sent=True)
    assert outcome_of(timeout) is MAY_HAVE_BEEN_SENT
    assert outcome_of(timeout).move is Move.UNKNOWN


class SlowSes:
    """An SES client that answers after `latency` seconds, counting calls in flight at once."""

    def __init__(self, latency: float) -> None:
        self.latency = latency
        self.lock = threading.Lock()
        self.now = 0
        self.most = 0
        self.order: list[str] = []

    def send_email(self, **request: Any) -> dict[str, str]:
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
        time.sleep(self.latency)
        with self.lock:
            self.now -= 1
        to = request["Destination"]["ToAddresses"][0]
        return {"MessageId": f"id-{to}"}


def _subtask(index: int) -> SubtaskModel:
    return SubtaskModel(f"t#{index % 16:02d}", f"ct_{index:03d}", task_id="t", email=f"p{index}@example.org")


def test_calls_run_one_at_a_time_when_ses_answers_within_the_interval() -> None:
    sender = SesSender(SlowSes(0.0), max_in_flight=8)
    subtask = _subtask(1)
    done = sender.submit(subtask, send_request("a@example.org", subtask, b"raw", None), 0.0, interval=1.0)
    assert [(c.subtask.contact_id, c.reply.result()) for c in done] == [("ct_001", "id-p1@example.org")]
    assert sender.pool is None


def test_slow_replies_overlap_up_to_the_pool_and_settle_in_send_order() -> None:
    ses = SlowSes(0.05)
    sender = SesSender(ses, max_in_flight=4, latency=0.05)
    settled = []
    for index in range(20):
        subtask = _subtask(index)
        request = send_request("a@example.org", subtask, b"raw", "config")
        assert request["ConfigurationSetName"] == "config"
        settled += sender.submit(subtask, request, float(index), interval=0.01)
    settled += list(sender.drain())
    sender.close()
    assert [c.sent_at for c in settled] == [float(index) for index in range(20)]
    assert all(c.reply.result() == f"id-p{index}@example.org" for index, c in enumerate(settled))
    assert 2 <= ses.most <= 4
