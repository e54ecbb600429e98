"""GET/POST /api/suppressions, GET /api/suppressions/export, DELETE /api/suppressions/{email}: the
caller's own list (an administrator may name a user), paged, exported as CSV, added to by hand with
queued emails skipped and refunded, removed (the contact resubscribed), and bad input a 4xx naming
the field."""

from __future__ import annotations

import csv
import io
from urllib.parse import quote

import pytest

from core.api.auth import Caller
from core.api.suppressions_api import export_suppressions
from core.states import SuppressionReason
from core.storage.ids import contact_id_for
from core.storage.models import ContactModel, SuppressionModel, UserModel
from core.suppressions import suppress
from tests.conftest import ApiClient, FakeClock
from tests.integration.given import assert_rejected, given_contacts, given_user
from tests.support.dispatching import plan_now, seed_sender_and_template, task
from tests.support.planning import seed_service, seed_task


@pytest.fixture(autouse=True)
def tenants(api: ApiClient) -> None:
    given_user(api, "alice")
    given_user(api, "bob")


def _add(api: ApiClient, emails: list[str], user: str = "alice", **fields: object) -> dict[str, object]:
    reply = api.post("/api/suppressions", {"emails": emails, **fields}, user=user)
    assert reply.status == 200, reply.body
    return reply.body  # type: ignore[no-any-return]


def _all_pages(api: ApiClient, query: str, limit: int, user: str = "alice") -> list[list[dict[str, str]]]:
    pages, cursor = [], ""
    while True:
        reply = api.get("/api/suppressions", user=user, query=f"{query}&limit={limit}&cursor={cursor}")
        assert reply.status == 200, reply.body
        pages.append(reply.body["suppressions"])
        cursor = reply.body["cursor"]
        if cursor is None:
            return pages


def test_the_list_is_paged_in_contact_id_order_and_filtered_by_reason(api: ApiClient, clock: FakeClock) -> None:
    # Given seven manual entries and two bounces of alice, and one of bob
    manual = [f"m{n}@example.org" for n in range(7)]
    _add(api, manual, detail="asked by phone")
    for email in ("b1@example.org", "b2@example.org"):
        suppress("alice", email, SuppressionReason.BOUNCED, clock.now())
    _add(api, ["bobs@example.org"], user="bob")

    # When / Then: every entry once, in contact-id order, 4 a page
    pages = _all_pages(api, "", 4)
    assert [len(page) for page in pages] == [4, 4, 1]
    listed = [entry for page in pages for entry in page]
    assert [entry["contact_id"] for entry in listed] == sorted(
        contact_id_for(e) for e in [*manual, "b1@example.org", "b2@example.org"]
    )
    first = next(entry for entry in listed if entry["email"] == "m0@example.org")
    assert first == {
        "email": "m0@example.org",
        "contact_id": contact_id_for("m0@example.org"),
        "reason": "manual",
        "detail": "asked by phone",
        "created_at": "2026-11-30T00:53:20Z",
        "updated_at": None,
    }
    bounced = [entry["email"] for page in _all_pages(api, "reason=bounced", 1) for entry in page]
    assert sorted(bounced) == ["b1@example.org", "b2@example.org"]
    # an administrator reads alice's list by naming her; bob sees only his own
    assert len(api.get("/api/suppressions", query="user_id=alice&limit=100").body["suppressions"]) == 9
    assert [e["email"] for e in api.get("/api/suppressions", user="bob").body["suppressions"]] == ["bobs@example.org"]


def test_adding_by_hand_skips_and_refunds_queued_emails_and_reports_each_address(
    api: ApiClient, aws: object, clock: FakeClock
) -> None:
    # Given a queued campaign of alice over two contacts
    seed_service("svc", clock.now())
    UserModel("alice").update(actions=[UserModel.service_ids.set(["svc"])])
    seed_sender_and_template("alice", clock.now())
    given_contacts(
        api, "alice", {"email": "ann@example.org", "tags": ["news"]}, {"email": "cy@example.org", "tags": ["news"]}
    )
    created = seed_task("alice", clock.now(), include=["news"])
    plan_now(created.task_id, aws, clock)  # type: ignore[arg-type]

    # When (the same address twice, in two spellings)
    body = _add(api, ["Ann@Example.org", "new@example.org", "ann@example.org"])

    # Then
    assert body == {
        "results": [
            {
                "email": "Ann@example.org",
                "contact_id": contact_id_for("ann@example.org"),
                "added": True,
                "reason": "manual",
                "suppressed_subtasks": 1,
            },
            {
                "email": "new@example.org",
                "contact_id": contact_id_for("new@example.org"),
                "added": True,
                "reason": "manual",
                "suppressed_subtasks": 0,
            },
        ]
    }
    assert ContactModel.get("alice", contact_id_for("ann@example.org")).status == "suppressed"
    final = task(created.task_id)
    assert (final.counts.queued, final.counts.suppressed, final.quota_refunded) == (1, 1, 1)
    assert UserModel.get("alice").remaining_quota == 100 - 2 + 1
    # a bounce recorded earlier keeps its reason: adding it by hand changes nothing
    suppress("alice", "gone@example.org", SuppressionReason.BOUNCED, clock.now())
    again = _add(api, ["gone@example.org"])
    assert again["results"] == [
        {
            "email": "gone@example.org",
            "contact_id": contact_id_for("gone@example.org"),
            "added": False,
            "reason": "bounced",
            "suppressed_subtasks": 0,
        }
    ]


def test_adding_honours_idempotency_key(api: ApiClient) -> None:
    headers = {"Idempotency-Key": "supp-1"}
    first = api.post("/api/suppressions", {"emails": ["x@example.org"]}, user="alice", headers=headers)
    again = api.post("/api/suppressions", {"emails": ["x@example.org"]}, user="alice", headers=headers)
    assert (first.status, again.status) == (200, 200)
    assert again.body == first.body and first.body["results"][0]["added"] is True
    assert again.headers.get("Idempotent-Replayed") == "true"
    other = api.post("/api/suppressions", {"emails": ["y@example.org"]}, user="alice", headers=headers)
    assert other.status == 409 and other.body["error"] == "idempotency_key_reused"


def test_the_csv_export_holds_every_entry_in_one_attachment(api: ApiClient, clock: FakeClock) -> None:
    # Given
    _add(api, ["a@example.org", "c@example.org"], detail='=HYPERLINK("http://evil")')
    suppress("alice", "b@example.org", SuppressionReason.BOUNCED, clock.now(), detail='550 "no such user", sorry')
    _add(api, ["bob-only@example.org"], user="bob")

    # When
    reply = api.get("/api/suppressions/export", user="alice")

    # Then
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("text/csv")
    assert reply.headers["Content-Disposition"] == 'attachment; filename="suppressions.csv"'
    assert "X-Next-Cursor" not in reply.headers
    rows = list(csv.reader(io.StringIO(reply.body)))
    assert rows[0] == ["email", "reason", "created_at", "detail"]
    by_email = {row[0]: row for row in rows[1:]}
    assert set(by_email) == {"a@example.org", "b@example.org", "c@example.org"}
    assert by_email["b@example.org"] == [
        "b@example.org",
        "bounced",
        "2026-11-30T00:53:20Z",
        '550 "no such user", sorry',
    ]
    # a cell a spreadsheet would run as a formula is exported as text
    assert by_email["a@example.org"][3] == '\'=HYPERLINK("http://evil")'
    assert [row[0] for row in rows[1:]] == sorted(by_email, key=contact_id_for)
    bounced = list(
        csv.reader(io.StringIO(api.get("/api/suppressions/export", user="alice", query="reason=bounced").body))
    )
    assert [row[0] for row in bounced[1:]] == ["b@example.org"]


def test_a_long_export_continues_from_its_cursor(api: ApiClient) -> None:
    emails = [f"p{n}@example.org" for n in range(5)]
    _add(api, emails)
    alice = Caller("alice", frozenset())
    first = export_suppressions(alice, None, None, None, max_rows=3)
    assert first.rows == 3 and first.next_cursor is not None
    rest = export_suppressions(alice, None, None, first.next_cursor, max_rows=3)
    assert rest.rows == 2 and rest.next_cursor is None
    exported = [row[0] for text in (first.text, rest.text) for row in list(csv.reader(io.StringIO(text)))[1:]]
    assert exported == sorted(emails, key=contact_id_for)


def test_delete_removes_the_entry_and_resubscribes_the_contact_it_suppressed(
    api: ApiClient, aws: object, clock: FakeClock
) -> None:
    # Given a contact suppressed by hand, and one that had unsubscribed itself before
    given_contacts(
        api, "alice", {"email": "ann@example.org", "tags": ["news"]}, {"email": "cy@example.org", "tags": ["news"]}
    )
    ContactModel("alice", contact_id_for("cy@example.org")).update(actions=[ContactModel.status.set("unsubscribed")])
    _add(api, ["ann@example.org", "cy@example.org"])
    assert ContactModel.get("alice", contact_id_for("ann@example.org")).status == "suppressed"

    # When
    reply = api.call("DELETE", f"/api/suppressions/{quote('ann@example.org')}", user="alice")
    kept = api.call("DELETE", "/api/suppressions/cy%40example.org", user="alice")

    # Then
    assert reply.status == 200 and reply.body == {
        "email": "ann@example.org",
        "contact_id": contact_id_for("ann@example.org"),
        "removed": True,
    }
    assert kept.status == 200
    assert ContactModel.get("alice", contact_id_for("ann@example.org")).status == "subscribed"
    assert ContactModel.get("alice", contact_id_for("cy@example.org")).status == "unsubscribed"  # its own doing
    assert SuppressionModel.count("alice") == 0
    # and the next campaign plans the resubscribed contact again
    seed_service("svc", clock.now())
    UserModel("alice").update(actions=[UserModel.service_ids.set(["svc"])])
    seed_sender_and_template("alice", clock.now())
    created = seed_task("alice", clock.now(), include=["news"])
    plan_now(created.task_id, aws, clock)  # type: ignore[arg-type]
    assert (task(created.task_id).counts.queued, task(created.task_id).counts.suppressed) == (1, 1)
    # a second delete finds nothing
    assert_rejected(api.call("DELETE", "/api/suppressions/ann%40example.org", user="alice"), "email", 404)


def test_the_recipients_own_word_is_removed_only_with_force(api: ApiClient, clock: FakeClock) -> None:
    given_contacts(api, "alice", {"email": "ann@example.org"})
    suppress("alice", "ann@example.org", SuppressionReason.COMPLAINED, clock.now())
    suppress("alice", "unsub@example.org", SuppressionReason.UNSUBSCRIBED, clock.now())

    refused = api.call("DELETE", "/api/suppressions/ann%40example.org", user="alice")
    assert_rejected(refused, "force", 409)
    assert refused.body["error"] == "suppressed_by_recipient"
    assert_rejected(api.call("DELETE", "/api/suppressions/unsub%40example.org", user="alice"), "force", 409)
    assert SuppressionModel.count("alice") == 2

    forced = api.call("DELETE", "/api/suppressions/ann%40example.org", user="alice", query="force=true")
    assert forced.status == 200
    assert ContactModel.get("alice", contact_id_for("ann@example.org")).status == "subscribed"


def test_another_tenants_list_is_not_found_and_only_admins_name_a_user(api: ApiClient) -> None:
    _add(api, ["secret@example.org"])
    assert_rejected(api.get("/api/suppressions", user="bob", query="user_id=alice"), "user_id", 404)
    assert_rejected(api.get("/api/suppressions/export", user="bob", query="user_id=alice"), "user_id", 404)
    assert_rejected(
        api.post("/api/suppressions", {"emails": ["x@example.org"]}, user="bob", query="user_id=alice"), "user_id", 404
    )
    assert_rejected(api.call("DELETE", "/api/suppressions/secret%40example.org", user="bob"), "email", 404)
    assert_rejected(api.get("/api/suppressions", query="user_id=nobody"), "user_id", 404)
    # an administrator adds to alice's list by naming her
    assert api.post("/api/suppressions", {"emails": ["y@example.org"]}, query="user_id=alice").status == 200
    assert SuppressionModel.count("alice") == 2 and SuppressionModel.count("bob") == 0
    # a token without a user record has no list to add to
    assert api.post("/api/suppressions", {"emails": ["z@example.org"]}, user="carol").status == 403


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"emails": ["not-an-address"]}, "emails[0]"),
        ({"emails": ["ok@example.org", "a\r\nBcc: x@example.org"]}, "emails[1]"),
        ({"emails": []}, "emails"),
        ({"emails": [f"p{n}@example.org" for n in range(1001)]}, "emails"),
        ({"emails": ["ok@example.org"], "reason": "bounced"}, "reason"),
        ({"emails": ["ok@example.org"], "detail": "x" * 501}, "detail"),
        ({"emails": ["ok@example.org"], "extra": 1}, "extra"),
        ({}, "emails"),
    ],
)
def test_bad_additions_are_422_naming_the_field_and_write_nothing(
    api: ApiClient, body: dict[str, object], field: str
) -> None:
    assert_rejected(api.post("/api/suppressions", body, user="alice"), field)
    assert SuppressionModel.count("alice") == 0


@pytest.mark.parametrize(
    ("path", "query", "field"),
    [
        ("/api/suppressions", "cursor=not!a!cursor", "cursor"),
        ("/api/suppressions", "cursor=AAAA", "cursor"),
        ("/api/suppressions", "limit=0", "limit"),
        ("/api/suppressions", "limit=1001", "limit"),
        ("/api/suppressions", "reason=spam", "reason"),
        ("/api/suppressions/export", "reason=spam", "reason"),
        ("/api/suppressions", "user_id=a%20b", "user_id"),
    ],
)
def test_bad_list_queries_are_422_naming_the_field(api: ApiClient, path: str, query: str, field: str) -> None:
    assert_rejected(api.get(path, user="alice", query=query), field)


@pytest.mark.parametrize("address", ["not-an-address", "a%0D%0Ab%40example.org", "%40example.org"])
def test_deleting_a_malformed_address_is_422_naming_email(api: ApiClient, address: str) -> None:
    assert_rejected(api.call("DELETE", f"/api/suppressions/{address}", user="alice"), "email")
