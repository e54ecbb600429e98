"""The schedule request a service gets, and the create/update dance against Scheduler's errors
(botocore Stubber: no AWS at all)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from core.dispatch.schedules import ScheduleConfig, delete_service_schedule, schedule_request, sync_service_schedule
from core.errors import ServiceUnavailable
from core.storage.models import EmailServiceModel

CONFIG = ScheduleConfig(
    group="dispatch",
    dispatcher_arn="arn:aws:lambda:us-east-1:123456789012:function:Dispatcher",
    role_arn="arn:aws:iam::123456789012:role/Invoke",
    dead_letter_arn="arn:aws:sqs:us-east-1:123456789012:Dlq",
)


def _service(enabled: bool = True) -> EmailServiceModel:
    return EmailServiceModel("svc_1", enabled=enabled)


@pytest.fixture
def stubbed() -> Iterator[tuple[Any, Stubber]]:
    client = boto3.client("scheduler", region_name="us-east-1")  # credentials: tests/conftest.py
    with Stubber(client) as stubber:
        yield client, stubber
        stubber.assert_no_pending_responses()


@pytest.mark.parametrize(
    ("running", "enabled", "state"),
    [(True, True, "ENABLED"), (True, False, "DISABLED"), (False, True, "DISABLED"), (False, False, "DISABLED")],
)
def test_a_schedule_runs_only_while_the_scheduler_runs_and_the_service_is_enabled(
    stubbed: tuple[Any, Stubber], running: bool, enabled: bool, state: str
) -> None:
    client, stubber = stubbed
    expected = schedule_request(CONFIG, "svc_1", state)
    stubber.add_response("update_schedule", {"ScheduleArn": "arn:x"}, expected)

    assert sync_service_schedule(client, CONFIG, _service(enabled), running) == state


def test_the_request_carries_the_service_id_and_never_delivers_a_stale_tick() -> None:
    request = schedule_request(CONFIG, "svc_1", "ENABLED")

    assert request["Name"] == "dispatch-svc_1" and request["GroupName"] == "dispatch"
    assert (request["ScheduleExpression"], request["FlexibleTimeWindow"]) == ("rate(1 minute)", {"Mode": "OFF"})
    assert json.loads(request["Target"]["Input"]) == {"service_id": "svc_1"}
    assert request["Target"]["RetryPolicy"] == {"MaximumEventAgeInSeconds": 60, "MaximumRetryAttempts": 0}
    assert request["Target"]["DeadLetterConfig"] == {"Arn": CONFIG.dead_letter_arn}


def test_a_missing_schedule_is_created(stubbed: tuple[Any, Stubber]) -> None:
    client, stubber = stubbed
    expected = schedule_request(CONFIG, "svc_1", "ENABLED")
    stubber.add_client_error("update_schedule", "ResourceNotFoundException", http_status_code=404)
    stubber.add_response("create_schedule", {"ScheduleArn": "arn:x"}, expected)

    assert sync_service_schedule(client, CONFIG, _service(), running=True) == "ENABLED"


def test_a_create_that_loses_a_race_updates_instead(stubbed: tuple[Any, Stubber]) -> None:
    client, stubber = stubbed
    expected = schedule_request(CONFIG, "svc_1", "DISABLED")
    stubber.add_client_error("update_schedule", "ResourceNotFoundException", http_status_code=404)
    stubber.add_client_error("create_schedule", "ConflictException", http_status_code=409)
    stubber.add_response("update_schedule", {"ScheduleArn": "arn:x"}, expected)

    assert sync_service_schedule(client, CONFIG, _service(), running=False) == "DISABLED"


def test_a_scheduler_outage_is_a_domain_error(stubbed: tuple[Any, Stubber]) -> None:
    client, stubber = stubbed
    stubber.add_client_error("update_schedule", "InternalServerException", http_status_code=500)

    with pytest.raises(ServiceUnavailable):
        sync_service_schedule(client, CONFIG, _service(), running=True)


def test_deleting_a_schedule_that_is_gone_is_fine(stubbed: tuple[Any, Stubber]) -> None:
    client, stubber = stubbed
    stubber.add_client_error("delete_schedule", "ResourceNotFoundException", http_status_code=404)

    delete_service_schedule(client, CONFIG, "svc_1")
