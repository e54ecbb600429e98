"""Email services: admins create and change them; everyone sees health and today's usage."""

from __future__ import annotations

from typing import Any

import pytest

from core.clock import utc_day
from core.storage.models import EmailServiceModel, ServiceUsageModel
from tests.conftest import ApiClient, FakeClock
from tests.integration.given import assert_rejected, given_service, given_user

VALID = {"name": "ses-eu", "region": "eu-west-1", "sending_rate": 0.05, "daily_quota": 50_000}


def test_admin_creates_service_that_starts_enabled_and_healthy(api: ApiClient) -> None:
    # When
    reply = api.post("/api/services", {**VALID, "from_domain": "mail.example.com", "configuration_set": "edm"})
    # Then
    assert reply.status == 201, reply.body
    body = reply.body
    assert body["service_id"].startswith("svc_")
    assert (body["enabled"], body["is_healthy"], body["used_today"], body["remaining_quota"]) == (
        True,
        True,
        0,
        50_000,
    )
    assert body["created_at"] == "2026-11-30T00:53:20Z"
    stored = EmailServiceModel.get(body["service_id"])
    assert (stored.name, stored.region, stored.sending_rate, stored.daily_quota) == (
        "ses-eu",
        "eu-west-1",
        0.05,
        50_000,
    )
    assert (stored.from_domain, stored.configuration_set) == ("mail.example.com", "edm")


def test_non_admin_cannot_create_a_service(api: ApiClient) -> None:
    # When
    reply = api.post("/api/services", VALID, user="mallory")
    # Then
    assert reply.status == 403
    assert reply.body["error"] == "forbidden"
    assert list(EmailServiceModel.scan()) == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({key: value for key, value in VALID.items() if key != "region"}, "region"),
        ({**VALID, "sending_rate": 0}, "sending_rate"),
        ({**VALID, "sending_rate": -1.5}, "sending_rate"),
        ({**VALID, "sending_rate": "fast"}, "sending_rate"),
        ({**VALID, "sending_rate": None}, "sending_rate"),
        ({**VALID, "daily_quota": -1}, "daily_quota"),
        ({**VALID, "daily_quota": 1.5}, "daily_quota"),
        ({**VALID, "daily_quota": True}, "daily_quota"),
        ({**VALID, "daily_quota": 10**30}, "daily_quota"),
        ({**VALID, "region": "Mars"}, "region"),
        ({**VALID, "region": "xx-nowhere-9"}, "region"),  # the shape of a region, but SES has no endpoint there
        ({**VALID, "name": ""}, "name"),
        ({**VALID, "from_domain": "not a domain"}, "from_domain"),
        ({**VALID, "configuration_set": "a b"}, "configuration_set"),
        ({**VALID, "owner": "me"}, "owner"),
        (None, "body"),
        ([], "body"),
        ("{not json", "body"),
    ],
)
def test_bad_service_input_is_rejected_naming_the_field(api: ApiClient, body: Any, field: str) -> None:
    # When
    reply = api.post("/api/services", body)
    # Then
    assert_rejected(reply, field)
    assert list(EmailServiceModel.scan()) == []


def test_a_body_nested_thousands_deep_is_a_400_not_a_crash(api: ApiClient) -> None:
    # When
    reply = api.post("/api/services", "[" * 50_000)
    # Then
    assert_rejected(reply, "body", status=400)


def test_service_list_reports_todays_usage_only(api: ApiClient, clock: FakeClock) -> None:
    # Given a service that used 250 of 1000 today and 900 yesterday
    service_id = given_service(api, daily_quota=1000)
    ServiceUsageModel(service_id, utc_day(clock.now()), used=250).save()
    ServiceUsageModel(service_id, utc_day(clock.now() - 86_400), used=900).save()
    EmailServiceModel(service_id).update(actions=[EmailServiceModel.last_sent.set(clock.now() - 60)])
    # When
    reply = api.get("/api/services")
    # Then
    assert reply.status == 200
    (service,) = reply.body["services"]
    assert (service["used_today"], service["remaining_quota"], service["usage_percentage"]) == (250, 750, 25.0)
    assert service["last_sent"] == "2026-11-30T00:52:20Z"


def test_user_sees_only_the_services_assigned_to_them(api: ApiClient) -> None:
    # Given two services, one assigned to alice
    mine = given_service(api, "mine")
    given_service(api, "other")
    given_user(api, "alice", service_ids=[mine])
    # When
    reply = api.get("/api/services", user="alice")
    # Then
    assert reply.status == 200
    assert [service["service_id"] for service in reply.body["services"]] == [mine]


def test_admin_sees_every_service(api: ApiClient) -> None:
    # Given
    first, second = given_service(api, "a"), given_service(api, "b")
    # When
    reply = api.get("/api/services")
    # Then
    assert sorted(service["service_id"] for service in reply.body["services"]) == sorted([first, second])


def test_user_unknown_to_the_system_sees_no_services(api: ApiClient) -> None:
    # Given
    given_service(api)
    # When
    reply = api.get("/api/services", user="stranger")
    # Then
    assert reply.status == 200
    assert reply.body == {"services": []}


def test_patch_changes_only_the_fields_given(api: ApiClient) -> None:
    # Given
    service_id = given_service(api, daily_quota=1000, from_domain="mail.example.com")
    # When
    reply = api.patch(f"/api/services/{service_id}", {"enabled": False, "sending_rate": 0.5})
    # Then
    assert reply.status == 200, reply.body
    assert (reply.body["enabled"], reply.body["sending_rate"], reply.body["daily_quota"]) == (False, 0.5, 1000)
    stored = EmailServiceModel.get(service_id)
    assert (stored.enabled, stored.sending_rate, stored.daily_quota, stored.from_domain) == (
        False,
        0.5,
        1000,
        "mail.example.com",
    )


def test_patch_with_null_clears_an_optional_field(api: ApiClient) -> None:
    # Given
    service_id = given_service(api, configuration_set="edm")
    # When
    reply = api.patch(f"/api/services/{service_id}", {"configuration_set": None})
    # Then
    assert reply.status == 200
    assert reply.body["configuration_set"] is None
    assert EmailServiceModel.get(service_id).configuration_set is None


def test_patch_cannot_null_a_required_field(api: ApiClient) -> None:
    # Given
    service_id = given_service(api, "keep-me")
    # When
    reply = api.patch(f"/api/services/{service_id}", {"name": None})
    # Then
    assert_rejected(reply, "name")
    assert EmailServiceModel.get(service_id).name == "keep-me"


@pytest.mark.parametrize("service_id", ["svc_000000000000000000000000", "bad$id", "x" * 3000])
def test_patch_of_unknown_service_is_404_and_creates_nothing(api: ApiClient, service_id: str) -> None:
    # When
    reply = api.patch(f"/api/services/{service_id}", {"enabled": False})
    # Then
    assert reply.status == 404
    assert reply.body["error"] == "not_found"
    assert list(EmailServiceModel.scan()) == []


def test_non_admin_cannot_patch_a_service(api: ApiClient) -> None:
    # Given
    service_id = given_service(api)
    # When
    reply = api.patch(f"/api/services/{service_id}", {"enabled": False}, user="mallory")
    # Then
    assert reply.status == 403
    assert EmailServiceModel.get(service_id).enabled is True
