"""Concurrent test sends on the single-threaded embedded AWS: the per-user rate limit and a service's
daily quota admit exactly what they allow, whatever the interleaving."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import boto3
import pytest
from botocore.config import Config

from core.api.auth import Caller
from core.api.rate_limits import take_test_send
from core.api.test_send_schemas import TestSendIn
from core.api.test_sends import DailyQuotaExhausted, TestSendDeps, send_test_email
from core.clock import SystemClock, utc_day
from core.errors import TooManyRequests
from core.settings import Settings
from core.storage.models import SenderModel, ServiceUsageModel, TemplateModel, UserModel
from local_runner.moto_server import EmbeddedAws
from tests.support.planning import seed_service, seed_user

pytestmark = pytest.mark.concurrency


def _race(calls: int, call: Any) -> list[str]:
    """Runs `call` on `calls` threads released together; each one's outcome: "ok" or the error's code."""
    start_together = threading.Barrier(calls)

    def run(number: int) -> str:
        start_together.wait()
        try:
            call(number)
        except TooManyRequests as error:
            return error.code
        return "ok"

    with ThreadPoolExecutor(max_workers=calls) as pool:
        return list(pool.map(run, range(calls)))


@pytest.mark.parametrize(("interval", "per_hour", "admitted"), [(0, 5, 5), (10, 100, 1)])
def test_concurrent_test_sends_never_pass_the_users_limits(
    aws_server: Settings, interval: float, per_hour: int, admitted: int
) -> None:
    now = SystemClock().now()
    seed_user("alice", 10, [], now)

    outcomes = _race(12, lambda _: take_test_send("alice", now, interval, per_hour))

    assert outcomes.count("ok") == admitted
    assert outcomes.count("too_many_requests") == 12 - admitted
    assert int(UserModel.get("alice", consistent_read=True).test_sends_in_window) == admitted


def test_concurrent_test_sends_of_many_users_never_pass_a_services_quota(
    aws_server: Settings, embedded_aws: EmbeddedAws
) -> None:
    # Given six tenants sharing one service with three sends left today
    clock = SystemClock()
    now = clock.now()
    seed_service("svc", now, daily_quota=3)
    boto3.client("ses").verify_domain_identity(Domain="shop.example")
    users = [f"user{n}" for n in range(6)]
    for user in users:
        seed_user(user, 10, ["svc"], now)
        SenderModel(user, "snd_1", email=f"{user}@shop.example", name="Shop", created_at=now).save()
        TemplateModel(user, "tpl_1", name="t", subject="Hi {{ name }}", html="<p>x</p>", created_at=now).save()
    deps = TestSendDeps(
        clock=clock,
        ses_for_region=lambda region: boto3.client(
            "sesv2", region_name=region, config=Config(retries={"max_attempts": 1})
        ),
        render_budget=2.0,
        min_interval=0,
        per_hour=10,
    )
    before = len(embedded_aws.sent_raw_messages())

    # When all six test-send at once
    def send(number: int) -> None:
        caller = Caller(user_id=users[number], groups=frozenset())
        send_test_email(caller, "tpl_1", TestSendIn(email=f"qa{number}@example.org"), deps)

    outcomes = _race(len(users), send)

    # Then exactly three went out, the others were told the quota is used up, and it is not passed
    assert outcomes.count("ok") == 3, outcomes
    assert outcomes.count(DailyQuotaExhausted.code) == 3, outcomes
    assert int(ServiceUsageModel.get("svc", utc_day(now), consistent_read=True).used) == 3
    assert len(embedded_aws.sent_raw_messages(start=before)) == 3
