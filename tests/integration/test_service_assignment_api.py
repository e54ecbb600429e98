"""PUT /api/users/{user_id}/services: administrators choose which services a user may send through."""

from __future__ import annotations

from core.api.schemas import MAX_SERVICES_PER_USER
from core.storage.models import UserModel
from tests.conftest import ApiClient
from tests.integration.given import assert_rejected, given_service, given_user


def test_admin_assigns_services_and_duplicates_collapse(api: ApiClient) -> None:
    # Given
    first, second = given_service(api, "a"), given_service(api, "b")
    given_user(api, "alice")
    # When
    reply = api.put("/api/users/alice/services", {"service_ids": [second, first, second]})
    # Then
    assert reply.status == 200, reply.body
    assert reply.body["service_ids"] == [second, first]
    assert reply.body["user_id"] == "alice"
    assert UserModel.get("alice").service_ids == [second, first]


def test_assignment_replaces_the_previous_set(api: ApiClient) -> None:
    # Given
    first, second = given_service(api, "a"), given_service(api, "b")
    given_user(api, "alice", service_ids=[first])
    # When
    reply = api.put("/api/users/alice/services", {"service_ids": [second]})
    # Then
    assert reply.status == 200
    assert UserModel.get("alice").service_ids == [second]


def test_empty_list_unassigns_everything(api: ApiClient) -> None:
    # Given
    given_user(api, "alice", service_ids=[given_service(api)])
    # When
    reply = api.put("/api/users/alice/services", {"service_ids": []})
    # Then
    assert reply.status == 200
    assert UserModel.get("alice").service_ids == []


def test_unknown_service_id_is_404_naming_its_position_and_nothing_changes(api: ApiClient) -> None:
    # Given
    known = given_service(api)
    given_user(api, "alice", service_ids=[known])
    # When
    reply = api.put("/api/users/alice/services", {"service_ids": [known, "svc_000000000000000000000000"]})
    # Then
    assert_rejected(reply, "service_ids[1]", status=404)
    assert UserModel.get("alice").service_ids == [known]


def test_more_services_than_the_limit_is_rejected(api: ApiClient) -> None:
    # Given
    given_user(api, "alice")
    too_many = [f"svc_{index:024x}" for index in range(MAX_SERVICES_PER_USER + 1)]
    # When
    reply = api.put("/api/users/alice/services", {"service_ids": too_many})
    # Then
    assert_rejected(reply, "service_ids")
    assert UserModel.get("alice").service_ids == []


def test_wrong_type_for_service_ids_is_rejected(api: ApiClient) -> None:
    # Given
    given_user(api, "alice")
    # When
    reply = api.put("/api/users/alice/services", {"service_ids": "svc_1"})
    # Then
    assert_rejected(reply, "service_ids")
    assert UserModel.get("alice").service_ids == []


def test_assigning_to_an_unknown_user_is_404(api: ApiClient) -> None:
    # Given
    service_id = given_service(api)
    # When
    reply = api.put("/api/users/nobody/services", {"service_ids": [service_id]})
    # Then
    assert reply.status == 404
    assert reply.body["error"] == "not_found"
    assert list(UserModel.scan()) == []


def test_non_admin_cannot_assign_services_even_to_themselves(api: ApiClient) -> None:
    # Given
    service_id = given_service(api)
    given_user(api, "alice")
    # When
    reply = api.put("/api/users/alice/services", {"service_ids": [service_id]}, user="alice")
    # Then
    assert reply.status == 403
    assert reply.body["error"] == "forbidden"
    assert UserModel.get("alice").service_ids == []
