"""Contacts: bulk import is an upsert by address that never resurrects a suppressed contact."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from moto.dynamodb.exceptions import MockValidationException, TransactionCanceledException
from moto.dynamodb.responses import DynamoHandler

from core.api.ownership import load_contacts
from core.api.schemas import MAX_CONTACTS_PER_IMPORT
from core.storage.ids import contact_id_for
from core.storage.models import ContactModel
from tests.conftest import ApiClient, FakeClock
from tests.integration.given import assert_rejected, given_contacts, given_user


@pytest.fixture(autouse=True)
def tenants(api: ApiClient) -> None:
    """Only users the administrators created may import contacts."""
    given_user(api, "alice")
    given_user(api, "bob")


def stored(user_id: str) -> dict[str, ContactModel]:
    return {contact.contact_id: contact for contact in ContactModel.query(user_id)}


def test_import_creates_contacts_with_ids_derived_from_the_address(api: ApiClient) -> None:
    # When
    reply = api.post(
        "/api/contacts",
        {
            "contacts": [
                {
                    "email": "Ann@Example.com",
                    "name": "Ann",
                    "tags": ["newsletter", "vip", "vip"],
                    "attributes": {"first_name": "Ann", "orders": 3, "score": 1.5, "member": True},
                    "timezone": "Europe/Paris",
                },
                {"email": "bob@example.com"},
            ]
        },
        user="alice",
    )
    # Then
    assert reply.status == 200, reply.body
    ann_id, bob_id = contact_id_for("ann@example.com"), contact_id_for("bob@example.com")
    assert reply.body == {"contact_ids": [ann_id, bob_id]}
    contacts = stored("alice")
    ann = contacts[ann_id]
    assert (ann.email, ann.name, ann.tags, ann.timezone, ann.status) == (
        "Ann@example.com",
        "Ann",
        ["newsletter", "vip"],
        "Europe/Paris",
        "subscribed",
    )
    assert ann.attributes.as_dict() == {"first_name": "Ann", "orders": 3, "score": 1.5, "member": True}
    assert (contacts[bob_id].tags, contacts[bob_id].attributes.as_dict(), contacts[bob_id].name) == ([], {}, None)


def test_reimport_updates_fields_but_keeps_status_and_created_at(api: ApiClient, clock: FakeClock) -> None:
    # Given a contact that has since unsubscribed
    (contact_id,) = given_contacts(api, "alice", {"email": "ann@example.com", "name": "Ann", "tags": ["a"]})
    ContactModel("alice", contact_id).update(actions=[ContactModel.status.set("unsubscribed")])
    created_at = ContactModel.get("alice", contact_id).created_at
    clock.advance(3600)
    # When the same address is imported again
    reply = api.post(
        "/api/contacts",
        {"contacts": [{"email": "ANN@example.com", "name": "Ann B", "tags": ["b"], "timezone": "Asia/Tokyo"}]},
        user="alice",
    )
    # Then
    assert reply.body == {"contact_ids": [contact_id]}
    contact = ContactModel.get("alice", contact_id)
    assert (contact.name, contact.tags, contact.timezone) == ("Ann B", ["b"], "Asia/Tokyo")
    assert contact.status == "unsubscribed"
    assert contact.created_at == created_at
    assert contact.updated_at == created_at + 3600
    assert len(stored("alice")) == 1


def test_reimport_keeps_fields_the_row_omits_and_clears_those_set_to_null(api: ApiClient) -> None:
    # Given
    (contact_id,) = given_contacts(
        api, "alice", {"email": "ann@example.com", "name": "Ann", "tags": ["a"], "attributes": {"x": 1}}
    )
    # When
    api.post("/api/contacts", {"contacts": [{"email": "ann@example.com", "name": None}]}, user="alice")
    # Then
    contact = ContactModel.get("alice", contact_id)
    assert (contact.name, contact.tags, contact.attributes.as_dict()) == (None, ["a"], {"x": 1})


def test_duplicate_addresses_in_one_request_collapse_and_the_last_row_wins(api: ApiClient) -> None:
    # When
    reply = api.post(
        "/api/contacts",
        {"contacts": [{"email": "ann@example.com", "name": "First"}, {"email": "Ann@example.com", "name": "Last"}]},
        user="alice",
    )
    # Then
    contact_id = contact_id_for("ann@example.com")
    assert reply.body == {"contact_ids": [contact_id]}
    assert [contact.name for contact in stored("alice").values()] == ["Last"]


def test_import_of_the_maximum_batch_succeeds(api: ApiClient) -> None:
    # When
    rows = [{"email": f"c{index}@example.com"} for index in range(MAX_CONTACTS_PER_IMPORT)]
    reply = api.post("/api/contacts", {"contacts": rows}, user="alice")
    # Then
    assert reply.status == 200
    assert len(reply.body["contact_ids"]) == MAX_CONTACTS_PER_IMPORT
    assert len(stored("alice")) == MAX_CONTACTS_PER_IMPORT


def test_import_of_stored_and_new_contacts_merges_both(api: ApiClient, clock: FakeClock) -> None:
    # Given two stored contacts, one of them unsubscribed since
    ann, bob = given_contacts(api, "alice", {"email": "ann@example.com"}, {"email": "bob@example.com"})
    ContactModel("alice", bob).update(actions=[ContactModel.status.set("unsubscribed")])
    first_import = clock.now()
    clock.advance(60)
    # When both come again with 150 new addresses (stored ones are updated one by one, new ones
    # in transactions of 100)
    rows = [{"email": f"new{index}@example.com", "tags": ["fresh"]} for index in range(150)]
    reply = api.post(
        "/api/contacts",
        {"contacts": [{"email": "ann@example.com", "tags": ["again"]}, *rows, {"email": "bob@example.com"}]},
        user="alice",
    )
    # Then
    assert reply.status == 200, reply.body
    assert reply.body["contact_ids"][0] == ann and reply.body["contact_ids"][-1] == bob
    contacts = stored("alice")
    assert len(contacts) == 152
    ann_now, bob_now = contacts[ann], contacts[bob]
    assert (ann_now.status, ann_now.tags, ann_now.created_at) == ("subscribed", ["again"], first_import)
    assert (bob_now.status, bob_now.created_at) == ("unsubscribed", first_import)
    new = [contact for contact in contacts.values() if contact.contact_id not in (ann, bob)]
    assert {(contact.status, tuple(contact.tags), contact.created_at) for contact in new} == {
        ("subscribed", ("fresh",), clock.now())
    }


def _refusing(operation: str, refused_call: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """DynamoDB refuses the `refused_call`th call of `operation` (UpdateItem, TransactWriteItems)."""
    handler = getattr(DynamoHandler, operation)
    calls = 0
    lock = threading.Lock()

    def refuse_one(self: DynamoHandler) -> Any:
        nonlocal calls
        with lock:
            calls += 1
            refuse = calls == refused_call
        if refuse:
            raise MockValidationException("refused by the test")
        return handler(self)

    monkeypatch.setattr(DynamoHandler, operation, refuse_one)


@pytest.mark.parametrize(("operation", "refused_call"), [("transact_write_items", 2), ("transact_write_items", 3)])
def test_a_write_refused_half_way_is_a_retryable_503_and_the_same_import_then_completes(
    api: ApiClient, monkeypatch: pytest.MonkeyPatch, operation: str, refused_call: int
) -> None:
    # Given 60 stored contacts (one unsubscribed since) and an import of them with 240 new ones
    stored_rows = [{"email": f"old{index}@example.com"} for index in range(60)]
    old_ids = given_contacts(api, "alice", *stored_rows)
    ContactModel("alice", old_ids[0]).update(actions=[ContactModel.status.set("unsubscribed")])
    body = {
        "contacts": [{**row, "name": "Imported"} for row in stored_rows]
        + [{"email": f"new{index}@example.com", "name": "Imported"} for index in range(240)]
    }
    # When DynamoDB refuses one write half way
    with monkeypatch.context() as patch:
        _refusing(operation, refused_call, patch)
        reply = api.post("/api/contacts", body, user="alice")
    # Then the reply says to send it again, and some contacts were not written
    assert reply.status == 503, reply.body
    assert reply.body["error"] == "service_unavailable"
    assert "same request again" in reply.body["message"]
    assert 0 < sum(contact.name == "Imported" for contact in stored("alice").values()) < 300
    # and sending it again imports everything, statuses untouched
    reply = api.post("/api/contacts", body, user="alice")
    assert reply.status == 200, reply.body
    contacts = stored("alice")
    assert len(contacts) == 300 and {contact.name for contact in contacts.values()} == {"Imported"}
    assert [contact.contact_id for contact in contacts.values() if contact.status != "subscribed"] == [old_ids[0]]


def test_a_transaction_cancelled_by_a_conflict_is_retried(
    api: ApiClient, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given DynamoDB cancels the first transaction for a conflicting write (another import of the
    # same address at the same moment)
    handler: Callable[[DynamoHandler], Any] = DynamoHandler.transact_write_items
    cancelled: list[int] = []

    def conflict_once(self: DynamoHandler) -> Any:
        if not cancelled:
            cancelled.append(1)
            raise TransactionCanceledException([("TransactionConflict", "conflict", None), (None, None, None)])
        return handler(self)

    monkeypatch.setattr(DynamoHandler, "transact_write_items", conflict_once)
    # When
    reply = api.post(
        "/api/contacts", {"contacts": [{"email": "a@example.com"}, {"email": "b@example.com"}]}, user="alice"
    )
    # Then it was written on the second attempt, after a pause
    assert reply.status == 200, reply.body
    assert len(stored("alice")) == 2
    assert cancelled and len(clock.slept) == 1


def _rows(*overrides: dict[str, Any]) -> dict[str, Any]:
    return {"contacts": [{"email": "ok@example.com"}, *overrides]}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"contacts": [{"email": f"c{i}@example.com"} for i in range(MAX_CONTACTS_PER_IMPORT + 1)]}, "contacts"),
        ({"contacts": []}, "contacts"),
        ({}, "contacts"),
        ({"contacts": None}, "contacts"),
        ({"contacts": "ann@example.com"}, "contacts"),
        (_rows({"email": "not-an-address"}), "contacts[1].email"),
        (_rows({"name": "no address"}), "contacts[1].email"),
        (_rows({"email": "a@example.com", "timezone": "Mars/Olympus_Mons"}), "contacts[1].timezone"),
        (_rows({"email": "a@example.com", "timezone": "../../etc/passwd"}), "contacts[1].timezone"),
        (_rows({"email": "a@example.com", "tags": ["has space"]}), "contacts[1].tags[0]"),
        (_rows({"email": "a@example.com", "tags": [f"t{i}" for i in range(51)]}), "contacts[1].tags"),
        (_rows({"email": "a@example.com", "tags": None}), "contacts[1].tags"),
        (_rows({"email": "a@example.com", "attributes": {"1st": "x"}}), "contacts[1].attributes.1st.[key]"),
        (_rows({"email": "a@example.com", "attributes": {"nested": {"a": 1}}}), "contacts[1].attributes.nested"),
        (_rows({"email": "a@example.com", "attributes": {"none": None}}), "contacts[1].attributes.none"),
        (_rows({"email": "a@example.com", "attributes": {"big": 10**40}}), "contacts[1].attributes.big"),
        (_rows({"email": "a@example.com", "attributes": {f"k{i}": i for i in range(51)}}), "contacts[1].attributes"),
        (_rows({"email": "a@example.com", "attributes": {"blob": "x" * 5000}}), "contacts[1].attributes"),
        (_rows({"email": "a@example.com", "name": "Ann\r\nBcc: x@example.com"}), "contacts[1].name"),
        (_rows({"email": "a@example.com", "status": "subscribed"}), "contacts[1].status"),
        (_rows("a@example.com"), "contacts[1]"),
    ],
)
def test_bad_contact_input_is_rejected_and_nothing_written(api: ApiClient, body: dict[str, Any], field: str) -> None:
    # When
    reply = api.post("/api/contacts", body, user="alice")
    # Then
    assert_rejected(reply, field)
    assert stored("alice") == {}


def test_nan_attribute_is_rejected(api: ApiClient) -> None:
    # When (Python's JSON parser accepts NaN; DynamoDB does not)
    reply = api.post(
        "/api/contacts", '{"contacts": [{"email": "a@example.com", "attributes": {"x": NaN}}]}', user="alice"
    )
    # Then
    assert_rejected(reply, "contacts[0].attributes.x")
    assert stored("alice") == {}


def test_contact_list_holds_only_the_callers_own(api: ApiClient) -> None:
    # Given
    given_contacts(api, "alice", {"email": "ann@example.com"})
    given_contacts(api, "bob", {"email": "bert@example.com"})
    # When
    reply = api.get("/api/contacts", user="bob")
    # Then
    assert reply.status == 200
    assert [contact["email"] for contact in reply.body["contacts"]] == ["bert@example.com"]
    assert reply.body["cursor"] is None


def test_contact_list_filters_by_tag(api: ApiClient) -> None:
    # Given
    given_contacts(
        api,
        "alice",
        {"email": "a@example.com", "tags": ["newsletter"]},
        {"email": "b@example.com", "tags": ["other"]},
        {"email": "c@example.com", "tags": ["other", "newsletter"]},
    )
    # When
    reply = api.get("/api/contacts", user="alice", query="tag=newsletter")
    # Then
    assert sorted(contact["email"] for contact in reply.body["contacts"]) == ["a@example.com", "c@example.com"]


def test_contact_list_pages_with_a_cursor_until_the_end(api: ApiClient) -> None:
    # Given five contacts
    ids = given_contacts(api, "alice", *({"email": f"c{index}@example.com"} for index in range(5)))
    # When paging two at a time
    seen: list[str] = []
    cursor = ""
    pages = 0
    while True:
        reply = api.get("/api/contacts", user="alice", query=f"limit=2&cursor={cursor}")
        assert reply.status == 200, reply.body
        seen += [contact["contact_id"] for contact in reply.body["contacts"]]
        pages += 1
        if reply.body["cursor"] is None:
            break
        cursor = reply.body["cursor"]
    # Then every contact comes once, in id order, over three pages
    assert seen == sorted(ids)
    assert pages == 3


def test_contact_reply_times_are_iso_utc(api: ApiClient) -> None:
    # Given
    given_contacts(api, "alice", {"email": "a@example.com"})
    # When
    (contact,) = api.get("/api/contacts", user="alice").body["contacts"]
    # Then
    assert contact["created_at"] == contact["updated_at"] == "2026-11-30T00:53:20Z"


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("cursor=not-a-cursor!", "cursor"),
        ("cursor=aGVsbG8", "cursor"),  # base64 of "hello": well-formed, but not a contact id
        ("limit=0", "limit"),
        ("limit=100000", "limit"),
        ("limit=ten", "limit"),
        ("tag=has%20space", "tag"),
    ],
)
def test_bad_list_query_is_rejected_naming_the_parameter(api: ApiClient, query: str, field: str) -> None:
    # When
    reply = api.get("/api/contacts", user="alice", query=query)
    # Then
    assert_rejected(reply, field)


def test_load_contacts_returns_only_the_users_own(api: ApiClient) -> None:
    # Given
    (ann,) = given_contacts(api, "alice", {"email": "ann@example.com"})
    (bert,) = given_contacts(api, "bob", {"email": "bert@example.com"})
    # When
    found = load_contacts("alice", [ann, bert, "ct_000000000000000000000000"])
    # Then
    assert list(found) == [ann]


def test_a_caller_without_a_user_record_imports_nothing(api: ApiClient) -> None:
    reply = api.post("/api/contacts", {"contacts": [{"email": "a@example.com"}]}, user="stranger")
    assert reply.status == 403, reply.body
    assert stored("stranger") == {}
