"""The health check (core.service_health, functions/health, POST /api/services/{id}/check) on
in-process moto: moto has no SES v2 GetAccount, so the fallback reads v1 GetSendQuota; the account
states moto cannot show (sending paused, SHUTDOWN, PROBATION, small quotas, account errors) come from
a stubbed SES v2 client (botocore Stubber)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.stub import Stubber

from core.dispatch.schedules import SCHEDULER_STATE_KEY
from core.dispatch.wakeups import WakeQueue
from core.service_health import (
    SOURCE_ACCOUNT,
    SOURCE_SEND_QUOTA,
    HealthDeps,
    RegionalClients,
    check_all_services,
    check_service,
)
from core.settings import Settings
from core.storage.models import EmailServiceModel, SchedulerStateModel
from local_runner.functions import function_specs, load_handler
from local_runner.template import load_template
from tests.conftest import ApiClient, FakeClock
from tests.support.planning import BudgetContext, seed_service

EVENTS = Path(__file__).resolve().parents[2] / "events"
# moto answers an operation it lacks with an error at once: botocore must not retry it.
NO_RETRIES = Config(retries={"max_attempts": 1})
REGION = "us-east-1"


def moto_clients(sesv2: Any = None) -> RegionalClients:
    """SES clients on moto, with `sesv2` (a stubbed client) in place of moto's SES v2 when given."""

    def make(api: str, region: str) -> Any:
        if api == "sesv2" and sesv2 is not None:
            return sesv2
        return boto3.client(api, region_name=region, config=NO_RETRIES)

    return RegionalClients(make)


@pytest.fixture
def wake_queue(aws: Settings) -> WakeQueue:
    return WakeQueue.from_settings(boto3.client("sqs", region_name=REGION), aws)


def wake_ups(settings: Settings) -> list[dict[str, Any]]:
    """The wake-up messages waiting on both dispatch wake-up queues."""
    sqs = boto3.client("sqs", region_name=REGION)
    bodies = []
    for url in (settings.dispatch_wake_queue_url, settings.paced_dispatch_wake_queue_url):
        messages = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", [])
        bodies += [json.loads(message["Body"]) for message in messages]
    return bodies


@pytest.fixture
def stubbed_sesv2() -> Iterator[tuple[Any, Stubber]]:
    client = boto3.client("sesv2", region_name=REGION, config=NO_RETRIES)
    with Stubber(client) as stubber:
        yield client, stubber
        stubber.assert_no_pending_responses()


def get_account(*, enabled: bool = True, enforcement: str = "HEALTHY", max_rate: float = 50, max_day: float = 50_000):
    return {
        "SendingEnabled": enabled,
        "EnforcementStatus": enforcement,
        "ProductionAccessEnabled": True,
        "SendQuota": {"Max24HourSend": max_day, "MaxSendRate": max_rate, "SentLast24Hours": 12},
    }


def start_scheduler(now: float) -> None:
    SchedulerStateModel(SCHEDULER_STATE_KEY, running=True, updated_at=now).save()


# ---------------------------------------------------------------- moto: the v1 fallback


def test_a_service_is_healthy_on_the_fallback_where_the_endpoint_has_no_get_account(
    aws: Settings, clock: FakeClock
) -> None:
    # Given a service that asks no more than moto's sandbox account gives (1/s, 200 a day)
    seed_service("svc_a", clock.now(), sending_rate=1.0, daily_quota=200)
    # When it is checked
    health = check_service("svc_a", HealthDeps(clock=clock, clients=moto_clients()))
    # Then it is healthy, read from GetSendQuota, with no warning
    assert health.is_healthy and health.health_reason is None and health.health_warnings == []
    assert health.health_source == SOURCE_SEND_QUOTA
    assert health.account.max_send_rate == 1.0 and health.account.max_24_hour_send == 200.0
    assert health.account.sending_enabled is None  # moto has no GetAccountSendingEnabled either
    stored = EmailServiceModel.get("svc_a")
    assert stored.is_healthy and stored.health_source == SOURCE_SEND_QUOTA
    assert stored.last_health_check == clock.now()


def test_an_unverified_from_domain_makes_the_service_unhealthy(aws: Settings, clock: FakeClock) -> None:
    seed_service("svc_a", clock.now(), sending_rate=1.0, daily_quota=200)
    EmailServiceModel("svc_a").update(actions=[EmailServiceModel.from_domain.set("mail.example.com")])
    deps = HealthDeps(clock=clock, clients=moto_clients())

    health = check_service("svc_a", deps)

    assert not health.is_healthy and health.changed
    assert health.health_reason == "identity_not_verified:mail.example.com"
    # Once SES has verified the domain, the next check finds it healthy again
    boto3.client("ses", region_name=REGION).verify_domain_identity(Domain="mail.example.com")
    health = check_service("svc_a", deps)
    assert health.is_healthy and health.health_reason is None and health.changed


def test_the_fallback_warns_when_a_service_asks_more_than_the_account_gives(aws: Settings, clock: FakeClock) -> None:
    # moto's sandbox account: 1 email a second, 200 a day
    seed_service("svc_fast", clock.now(), sending_rate=0.1, daily_quota=1000)
    health = check_service("svc_fast", HealthDeps(clock=clock, clients=moto_clients()))
    assert health.is_healthy
    assert health.health_warnings == [
        "sending_rate_above_account_max:10/s>1/s",
        "daily_quota_above_account_max:1000>200",
    ]


# ---------------------------------------------------------------- SES v2 GetAccount (stubbed)


@pytest.mark.parametrize(
    ("account", "healthy", "reason", "warnings"),
    [
        (get_account(), True, None, []),
        (get_account(enabled=False), False, "sending_paused", []),
        (get_account(enforcement="SHUTDOWN"), False, "enforcement:SHUTDOWN", []),
        (get_account(enforcement="PROBATION"), True, None, ["enforcement:PROBATION"]),
        (
            get_account(enabled=False, enforcement="SHUTDOWN"),
            False,
            "sending_paused, enforcement:SHUTDOWN",
            [],
        ),
        (
            get_account(max_rate=5, max_day=500),
            True,
            None,
            ["sending_rate_above_account_max:20/s>5/s", "daily_quota_above_account_max:1000>500"],
        ),
        (get_account(max_day=-1), True, None, []),  # -1: no daily limit
    ],
    ids=["healthy", "paused", "shutdown", "probation", "paused-and-shutdown", "small-quota", "unlimited"],
)
def test_what_get_account_says_makes_the_service_healthy_or_not(
    aws: Settings,
    clock: FakeClock,
    stubbed_sesv2: tuple[Any, Stubber],
    account: dict[str, Any],
    healthy: bool,
    reason: str | None,
    warnings: list[str],
) -> None:
    client, stubber = stubbed_sesv2
    stubber.add_response("get_account", account, {})
    seed_service("svc_a", clock.now(), sending_rate=0.05, daily_quota=1000)

    health = check_service("svc_a", HealthDeps(clock=clock, clients=moto_clients(client)))

    assert (health.is_healthy, health.health_reason, health.health_warnings) == (healthy, reason, warnings)
    assert health.health_source == SOURCE_ACCOUNT
    assert health.account.enforcement_status == account["EnforcementStatus"]
    assert health.account.sending_enabled is account["SendingEnabled"]
    stored = EmailServiceModel.get("svc_a")
    assert (stored.is_healthy, stored.health_reason, stored.health_warnings) == (healthy, reason, warnings)
    assert stored.account_sent_last_24_hours == 12


def test_the_identity_is_read_from_ses_v2_when_get_account_answers(
    aws: Settings, clock: FakeClock, stubbed_sesv2: tuple[Any, Stubber]
) -> None:
    client, stubber = stubbed_sesv2
    stubber.add_response("get_account", get_account(), {})
    stubber.add_response("get_email_identity", {"VerifiedForSendingStatus": False}, {"EmailIdentity": "example.com"})
    seed_service("svc_a", clock.now(), sending_rate=0.05, daily_quota=1000)
    EmailServiceModel("svc_a").update(actions=[EmailServiceModel.from_domain.set("example.com")])

    health = check_service("svc_a", HealthDeps(clock=clock, clients=moto_clients(client)))

    assert not health.is_healthy and health.health_reason == "identity_not_verified:example.com"


def test_an_account_level_error_makes_the_service_unhealthy(
    aws: Settings, clock: FakeClock, stubbed_sesv2: tuple[Any, Stubber]
) -> None:
    client, stubber = stubbed_sesv2
    stubber.add_client_error("get_account", service_error_code="AccountSuspendedException", http_status_code=400)
    seed_service("svc_a", clock.now())

    health = check_service("svc_a", HealthDeps(clock=clock, clients=moto_clients(client)))

    assert not health.is_healthy and health.health_reason == "account_error:AccountSuspendedException"


def test_a_read_that_fails_otherwise_leaves_the_health_as_it_was_and_says_so(
    aws: Settings, clock: FakeClock, stubbed_sesv2: tuple[Any, Stubber]
) -> None:
    client, stubber = stubbed_sesv2
    stubber.add_client_error("get_account", service_error_code="TooManyRequestsException", http_status_code=429)
    seed_service("svc_a", clock.now(), healthy=False)
    EmailServiceModel("svc_a").update(actions=[EmailServiceModel.health_reason.set("sending_paused")])

    health = check_service("svc_a", HealthDeps(clock=clock, clients=moto_clients(client)))

    assert not health.is_healthy and health.health_reason == "sending_paused" and not health.changed
    assert health.health_warnings == ["check_failed:GetAccount:TooManyRequestsException"]
    assert EmailServiceModel.get("svc_a").last_health_check == clock.now()


# ---------------------------------------------------------------- changes of health


def test_a_service_the_dispatcher_marked_unhealthy_recovers_and_its_dispatcher_is_woken(
    aws: Settings, clock: FakeClock, wake_queue: WakeQueue
) -> None:
    # Given the scheduler running and a service the dispatcher stopped on SendingPausedException
    start_scheduler(clock.now())
    seed_service("svc_a", clock.now(), sending_rate=1.0, daily_quota=200, healthy=False)
    EmailServiceModel("svc_a").update(
        actions=[EmailServiceModel.health_reason.set("SendingPausedException: sending is paused for this account")]
    )
    # When the next check finds the account sending again
    health = check_service("svc_a", HealthDeps(clock=clock, clients=moto_clients(), wake=wake_queue))
    # Then the service is healthy, and its dispatcher is woken to send what waited
    assert health.is_healthy and health.changed and health.health_reason is None
    stored = EmailServiceModel.get("svc_a")
    assert stored.is_healthy and stored.health_reason is None
    assert wake_ups(aws) == [{"service_id": "svc_a", "reason": "enabled"}]


def test_a_recovered_service_is_not_woken_while_the_scheduler_is_stopped(
    aws: Settings, clock: FakeClock, wake_queue: WakeQueue
) -> None:
    seed_service("svc_a", clock.now(), sending_rate=1.0, daily_quota=200, healthy=False)
    health = check_service("svc_a", HealthDeps(clock=clock, clients=moto_clients(), wake=wake_queue))
    assert health.is_healthy and health.changed
    assert wake_ups(aws) == []


def test_a_service_becoming_unhealthy_is_announced_to_its_dispatcher(
    aws: Settings, clock: FakeClock, stubbed_sesv2: tuple[Any, Stubber], wake_queue: WakeQueue
) -> None:
    client, stubber = stubbed_sesv2
    stubber.add_response("get_account", get_account(enabled=False), {})
    start_scheduler(clock.now())
    seed_service("svc_a", clock.now())

    health = check_service("svc_a", HealthDeps(clock=clock, clients=moto_clients(client), wake=wake_queue))

    assert not health.is_healthy and health.changed
    # control_changed: a sending dispatcher reloads its service within a second, and stops
    assert SchedulerStateModel.get(SCHEDULER_STATE_KEY).control_seq == 1
    assert wake_ups(aws) == []


class _DispatcherStopsTheServiceDuringTheCheck:
    """A SES v2 client whose GetAccount finds the account healthy, while a dispatcher marks the
    service unhealthy between the check's read of the service and its write."""

    def get_account(self) -> dict[str, Any]:
        EmailServiceModel("svc_a").update(
            actions=[EmailServiceModel.is_healthy.set(False), EmailServiceModel.health_reason.set("SendingPaused")]
        )
        return get_account()


def test_a_health_change_made_during_the_check_is_seen_not_overwritten_blindly(
    aws: Settings, clock: FakeClock, wake_queue: WakeQueue
) -> None:
    start_scheduler(clock.now())
    seed_service("svc_a", clock.now(), sending_rate=1.0)
    clients = moto_clients(_DispatcherStopsTheServiceDuringTheCheck())

    health = check_service("svc_a", HealthDeps(clock=clock, clients=clients, wake=wake_queue))

    # The write conditional on "healthy" failed, the service was read again: the check (newer than
    # the dispatcher's error) makes it healthy, as a change, so its dispatcher is woken
    assert health.is_healthy and health.changed
    assert wake_ups(aws) == [{"service_id": "svc_a", "reason": "enabled"}]


# ---------------------------------------------------------------- the scheduled run


def test_a_run_checks_every_service_and_records_when_on_each_and_on_the_scheduler(
    aws: Settings, clock: FakeClock
) -> None:
    seed_service("svc_a", clock.now(), sending_rate=1.0, daily_quota=200)
    seed_service("svc_b", clock.now(), sending_rate=1.0, daily_quota=200, healthy=False)
    EmailServiceModel("svc_b").update(
        actions=[EmailServiceModel.region.set("eu-west-1"), EmailServiceModel.from_domain.set("eu.example.com")]
    )
    seed_service("svc_off", clock.now(), sending_rate=1.0, daily_quota=200, enabled=False)
    EmailServiceModel("svc_off").update(actions=[EmailServiceModel.from_domain.set("nowhere.example.com")])
    boto3.client("ses", region_name="eu-west-1").verify_domain_identity(Domain="eu.example.com")
    clock.advance(3600)

    run = check_all_services(HealthDeps(clock=clock, clients=moto_clients()))

    assert sorted(result.service_id for result in run.results) == ["svc_a", "svc_b", "svc_off"]
    assert run.errors == []
    assert run.unhealthy == []  # svc_off is unhealthy, but disabled
    assert not EmailServiceModel.get("svc_off").is_healthy
    assert [result.service_id for result in run.results if result.changed] == ["svc_b", "svc_off"]
    for service in EmailServiceModel.scan():
        assert service.last_health_check == clock.now()
    assert SchedulerStateModel.get(SCHEDULER_STATE_KEY).last_health_check == clock.now()


def test_the_health_function_on_its_sample_event_checks_and_publishes_metrics(
    aws: Settings, clock: FakeClock, capsys: pytest.CaptureFixture[str]
) -> None:
    seed_service("svc_a", clock.now(), sending_rate=1.0, daily_quota=200)
    seed_service("svc_b", clock.now(), sending_rate=1.0, daily_quota=200)
    EmailServiceModel("svc_b").update(actions=[EmailServiceModel.from_domain.set("unverified.example")])
    handler_module = _health_handler()
    handler_module.runtime.cache_clear()
    handler_module.runtime().clock = clock
    capsys.readouterr()

    summary = handler_module.lambda_handler(json.loads((EVENTS / "health_check.json").read_text()), BudgetContext(0))

    assert summary["checked"] == 2 and summary["unhealthy"] == ["svc_b"] and summary["changed"] == ["svc_b"]
    documents = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line]
    healthy = {doc["ServiceId"]: doc["ServiceHealthy"] for doc in documents if "ServiceHealthy" in doc}
    assert healthy == {"svc_a": [1.0], "svc_b": [0.0]}
    (overall,) = [doc for doc in documents if "UnhealthyServices" in doc]
    assert overall["UnhealthyServices"] == [1.0]
    assert overall["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [[]]
    assert overall["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "EdmScheduler"


def _health_handler() -> Any:
    import importlib

    load_handler(function_specs(load_template())["HealthFunction"])  # its code dir on sys.path, as Lambda has it
    return importlib.import_module("health_handler")


# ---------------------------------------------------------------- POST /api/services/{service_id}/check


def test_an_admin_checks_a_service_through_the_api(api: ApiClient, clock: FakeClock) -> None:
    reply = api.post("/api/services", {"name": "ses", "region": REGION, "sending_rate": 1.0, "daily_quota": 200})
    service_id = reply.body["service_id"]
    clock.advance(60)

    reply = api.post(f"/api/services/{service_id}/check")

    assert reply.status == 200, reply.body
    assert reply.body["service_id"] == service_id and reply.body["is_healthy"] is True
    assert reply.body["health_source"] == SOURCE_SEND_QUOTA and reply.body["health_warnings"] == []
    assert reply.body["account"]["max_send_rate"] == 1.0
    assert reply.body["last_health_check"] is not None and reply.body["changed"] is False
    listed = api.get("/api/services").body["services"][0]
    assert listed["last_health_check"] == reply.body["last_health_check"]


def test_a_services_from_domain_is_registered_with_ses_in_its_region_when_saved(api: ApiClient) -> None:
    # Given a service created with a domain (and another whose domain changes later)
    body = {"name": "ses", "region": "eu-west-1", "sending_rate": 1.0, "daily_quota": 200}
    created = api.post("/api/services", {**body, "from_domain": "mail.example.com"}).body["service_id"]
    changed = api.post("/api/services", body).body["service_id"]
    assert api.patch(f"/api/services/{changed}", {"from_domain": "news.example.com"}).status == 200

    # Then SES was asked to verify each domain in the service's region (the embedded SES verifies at
    # once; real SES once its DKIM records are published), and the check finds them verified
    identities = boto3.client("sesv2", region_name="eu-west-1").list_email_identities()["EmailIdentities"]
    assert {"mail.example.com", "news.example.com"} <= {i["IdentityName"] for i in identities}
    for service_id in (created, changed):
        reply = api.post(f"/api/services/{service_id}/check")
        assert (reply.status, reply.body["is_healthy"], reply.body["health_reason"]) == (200, True, None)
    # and saving it again is no error (SES says it already exists)
    assert api.patch(f"/api/services/{created}", {"from_domain": "mail.example.com"}).status == 200


def test_only_an_admin_may_check_a_service(api: ApiClient) -> None:
    reply = api.post("/api/services", {"name": "ses", "region": REGION, "sending_rate": 1.0, "daily_quota": 200})
    service_id = reply.body["service_id"]

    reply = api.post(f"/api/services/{service_id}/check", user="alice")

    assert reply.status == 403 and reply.body["error"] == "forbidden"
    assert EmailServiceModel.get(service_id).last_health_check is None


@pytest.mark.parametrize("service_id", ["svc_missing", "not an id!"])
def test_checking_an_unknown_service_is_404(api: ApiClient, service_id: str) -> None:
    reply = api.post(f"/api/services/{service_id}/check")
    assert reply.status == 404 and reply.body["error"] == "not_found"
