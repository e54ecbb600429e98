"""Senders: a user's from-addresses; names go into a header, so no line breaks."""

from __future__ import annotations

from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from core.api.ownership import load_sender
from core.errors import NotFound
from core.storage.models import SenderModel
from tests.conftest import ApiClient
from tests.integration.given import assert_rejected, given_service, given_user


@pytest.fixture(autouse=True)
def tenants(api: ApiClient) -> None:
    """Only users the administrators created may create senders."""
    given_user(api, "alice")
    given_user(api, "bob")


def test_user_creates_a_sender(api: ApiClient) -> None:
    # When
    reply = api.post("/api/senders", {"email": "news@shop.example", "name": "Shop News"}, user="alice")
    # Then
    assert reply.status == 201, reply.body
    assert reply.body["sender_id"].startswith("snd_")
    assert (reply.body["email"], reply.body["name"]) == ("news@shop.example", "Shop News")
    stored = SenderModel.get("alice", reply.body["sender_id"])
    assert (stored.email, stored.name) == ("news@shop.example", "Shop News")


def _identities(region: str) -> set[str]:
    listed = boto3.client("sesv2", region_name=region).list_email_identities()["EmailIdentities"]
    return {identity["IdentityName"] for identity in listed}


def test_a_sender_is_verified_in_every_region_its_tenants_services_send_from(api: ApiClient) -> None:
    # Given carol sends through a service in us-east-1 and one in eu-west-1
    home, eu = given_service(api, "ses-home"), given_service(api, "ses-eu", region="eu-west-1")
    given_user(api, "carol", service_ids=[home, eu])
    # When she adds a sender
    assert api.post("/api/senders", {"email": "hi@carol.example", "name": "C"}, user="carol").status == 201
    # Then SES verifies it in both regions (a service sends through its own region's account)
    assert "hi@carol.example" in _identities("us-east-1") & _identities("eu-west-1")
    assert "hi@carol.example" not in _identities("ap-southeast-2")
    # And a service in a new region assigned later gets her existing senders verified there first
    sydney = given_service(api, "ses-syd", region="ap-southeast-2")
    reply = api.put("/api/users/carol/services", {"service_ids": [home, eu, sydney]})
    assert reply.status == 200, reply.body
    assert "hi@carol.example" in _identities("ap-southeast-2")


def test_creating_a_sender_asks_ses_to_verify_the_address(api: ApiClient) -> None:
    # When the address is added twice (with two display names): one identity, no error
    first = api.post("/api/senders", {"email": "news@shop.example", "name": "Shop"}, user="alice")
    second = api.post("/api/senders", {"email": "news@shop.example", "name": "Shop team"}, user="alice")
    # Then
    assert (first.status, second.status) == (201, 201)
    identities = boto3.client("sesv2").list_email_identities()["EmailIdentities"]
    assert [identity["IdentityName"] for identity in identities] == ["news@shop.example"]


@pytest.mark.parametrize(
    "taken",
    ["news@shop.example", "NEWS@Shop.Example", "billing@shop.example", "ceo@SHOP.example"],
)
def test_another_tenants_address_or_domain_is_409_and_nothing_is_saved(api: ApiClient, taken: str) -> None:
    # Given alice registered an address of shop.example
    assert api.post("/api/senders", {"email": "news@shop.example", "name": "Shop"}, user="alice").status == 201
    # When bob registers the same address, or any address of that domain
    reply = api.post("/api/senders", {"email": taken, "name": "Not the shop"}, user="bob")
    # Then
    assert_rejected(reply, "email", status=409)
    assert reply.body["error"] == "sender_taken"
    assert list(SenderModel.query("bob")) == []


def test_public_mailbox_domains_are_owned_address_by_address(api: ApiClient) -> None:
    assert api.post("/api/senders", {"email": "shop@gmail.com", "name": "Shop"}, user="alice").status == 201
    # Another gmail.com address is free; the same one is not
    assert api.post("/api/senders", {"email": "bob.shop@gmail.com", "name": "Bob"}, user="bob").status == 201
    reply = api.post("/api/senders", {"email": "Shop@gmail.com", "name": "Fake"}, user="bob")
    assert_rejected(reply, "email", status=409)


def test_a_caller_without_a_user_record_creates_no_sender_and_makes_ses_send_nothing(api: ApiClient) -> None:
    reply = api.post("/api/senders", {"email": "x@victim.example", "name": "X"}, user="stranger")
    assert reply.status == 403, reply.body
    assert boto3.client("sesv2").list_email_identities()["EmailIdentities"] == []
    assert list(SenderModel.query("stranger")) == []


def test_sender_creation_is_capped_per_hour_with_retry_after(api: ApiClient, clock: Any) -> None:
    import api_context

    limit = api_context.deps().settings.sender_creations_per_hour
    for n in range(limit):
        assert api.post("/api/senders", {"email": f"s{n}@alice.example", "name": "S"}, user="alice").status == 201
    # When one more is asked for in the same hour
    reply = api.post("/api/senders", {"email": "one.more@alice.example", "name": "S"}, user="alice")
    # Then 429 with the seconds until the hour turns, and SES was not asked
    assert reply.status == 429, reply.body
    assert 1 <= int(reply.headers["Retry-After"]) <= 3600
    addresses = {i["IdentityName"] for i in boto3.client("sesv2").list_email_identities()["EmailIdentities"]}
    assert "one.more@alice.example" not in addresses
    # Other users are not affected, and after the hour alice may again
    assert api.post("/api/senders", {"email": "b@bob.example", "name": "B"}, user="bob").status == 201
    clock.advance(int(reply.headers["Retry-After"]))
    assert api.post("/api/senders", {"email": "one.more@alice.example", "name": "S"}, user="alice").status == 201


def test_sender_is_not_saved_when_ses_cannot_start_verifying(api: ApiClient, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given SES failing
    import api_context

    def unavailable(**kwargs: Any) -> None:
        raise ClientError(
            {"Error": {"Code": "TooManyRequestsException", "Message": "slow down"}}, "CreateEmailIdentity"
        )

    monkeypatch.setattr(api_context.deps().ses, "create_email_identity", unavailable)
    # When
    reply = api.post("/api/senders", {"email": "news@shop.example", "name": "Shop"}, user="alice")
    # Then a retryable 503 naming the address, and nothing saved
    assert reply.status == 503 and "news@shop.example" in reply.body["message"]
    assert list(SenderModel.query("alice")) == []


def test_sender_list_holds_only_the_callers_own(api: ApiClient) -> None:
    # Given
    mine = api.post("/api/senders", {"email": "a@shop.example", "name": "A"}, user="alice").body["sender_id"]
    api.post("/api/senders", {"email": "b@shop.example", "name": "B"}, user="bob")
    # When
    reply = api.get("/api/senders", user="alice")
    # Then
    assert reply.status == 200
    assert [sender["sender_id"] for sender in reply.body["senders"]] == [mine]


def test_another_users_sender_is_not_found(api: ApiClient) -> None:
    # Given alice's sender
    sender_id = api.post("/api/senders", {"email": "a@shop.example", "name": "A"}, user="alice").body["sender_id"]
    # When bob's task creation looks it up / Then it does not exist for him
    assert load_sender("alice", sender_id).email == "a@shop.example"
    with pytest.raises(NotFound) as raised:
        load_sender("bob", sender_id)
    assert raised.value.details == [{"field": "sender_id", "reason": "unknown sender id"}]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"email": "news@shop.example", "name": "Shop\r\nBcc: victim@example.com"}, "name"),
        ({"email": "news@shop.example", "name": "Shop\nNews"}, "name"),
        ({"email": "news@shop.example\r\nBcc: victim@example.com", "name": "Shop"}, "email"),
        ({"email": "not-an-address", "name": "Shop"}, "email"),
        ({"email": "news@shop.example"}, "name"),
        ({"name": "Shop"}, "email"),
        ({"email": "news@shop.example", "name": 42}, "name"),
        ({"email": "news@shop.example", "name": None}, "name"),
        ({"email": "news@shop.example", "name": "   "}, "name"),
        ({"email": "news@shop.example", "name": "x" * 201}, "name"),
        ({"email": "news@shop.example", "name": "Shop", "verified": True}, "verified"),
    ],
)
def test_bad_sender_input_is_rejected_and_nothing_written(api: ApiClient, body: dict[str, Any], field: str) -> None:
    # When
    reply = api.post("/api/senders", body, user="alice")
    # Then
    assert_rejected(reply, field)
    assert list(SenderModel.query("alice")) == []


def test_sender_list_pages_with_a_cursor(api: ApiClient) -> None:
    # Given three senders
    created = [
        api.post("/api/senders", {"email": f"s{index}@shop.example", "name": "S"}, user="alice").body["sender_id"]
        for index in range(3)
    ]
    # When
    first = api.get("/api/senders", user="alice", query="limit=2")
    second = api.get("/api/senders", user="alice", query=f"limit=2&cursor={first.body['cursor']}")
    # Then
    listed = [sender["sender_id"] for sender in first.body["senders"] + second.body["senders"]]
    assert listed == sorted(created)
    assert second.body["cursor"] is None


def test_bad_sender_cursor_is_rejected_naming_cursor(api: ApiClient) -> None:
    # When
    reply = api.get("/api/senders", user="alice", query="cursor=%25%25%25")
    # Then
    assert_rejected(reply, "cursor")
