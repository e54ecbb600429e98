"""PATCH /api/users/{user_id}: an administrator sets a user's weight (weighted fairness); the change
is announced to sending dispatchers; bad input names the field and changes nothing."""

from __future__ import annotations

import pytest

from core.dispatch.schedules import SCHEDULER_STATE_KEY
from core.storage.models import SchedulerStateModel, UserModel
from tests.conftest import ApiClient


def control_seq() -> int:
    try:
        return int(SchedulerStateModel.get(SCHEDULER_STATE_KEY, consistent_read=True).control_seq or 0)
    except SchedulerStateModel.DoesNotExist:
        return 0


@pytest.fixture
def alice(api: ApiClient) -> None:
    assert api.post("/api/users", {"user_id": "alice", "email": "alice@example.com", "quota": 10}).status == 201


def test_an_admin_sets_a_weight_and_sending_dispatchers_are_told(api: ApiClient, alice: None) -> None:
    assert api.get("/api/users/alice").body["weight"] == 1
    seq = control_seq()

    reply = api.patch("/api/users/alice", {"weight": 3})

    assert reply.status == 200, reply.body
    assert reply.body["weight"] == 3 and reply.body["quota"] == 10
    assert api.get("/api/users/alice", user="alice").body["weight"] == 3
    assert UserModel.get("alice").weight == 3
    assert control_seq() == seq + 1  # dispatchers reload (and read weights) at their next look


def test_an_empty_patch_changes_nothing_and_announces_nothing(api: ApiClient, alice: None) -> None:
    api.patch("/api/users/alice", {"weight": 4})
    seq = control_seq()

    assert api.patch("/api/users/alice", {}).body["weight"] == 4
    assert control_seq() == seq


def test_a_user_cannot_change_weights_not_even_their_own(api: ApiClient, alice: None) -> None:
    api.post("/api/users", {"user_id": "bob", "email": "bob@example.com", "quota": 10})
    for target in ("alice", "bob"):
        reply = api.patch(f"/api/users/{target}", {"weight": 100}, user="bob")
        assert (reply.status, reply.body["error"]) == (403, "forbidden")
        assert UserModel.get(target).weight == 1


def test_an_unknown_user_is_404_and_nothing_is_created(api: ApiClient) -> None:
    seq = control_seq()
    for user_id in ("nobody", "x" * 300):
        assert api.patch(f"/api/users/{user_id}", {"weight": 2}).status == 404
    assert UserModel.count() == 0 and control_seq() == seq


@pytest.mark.parametrize("weight", [0, -1, 101, 2.5, "3", True, None])
def test_a_bad_weight_names_the_field_and_changes_nothing(api: ApiClient, alice: None, weight: object) -> None:
    seq = control_seq()

    reply = api.patch("/api/users/alice", {"weight": weight})

    assert reply.status == 422, reply.body
    assert [detail["field"] for detail in reply.body["details"]] == ["weight"]
    assert UserModel.get("alice").weight == 1 and control_seq() == seq


def test_an_unknown_field_is_refused(api: ApiClient, alice: None) -> None:
    reply = api.patch("/api/users/alice", {"quota": 5})
    assert reply.status == 422 and reply.body["details"][0]["field"] == "quota"
    assert UserModel.get("alice").quota == 10
