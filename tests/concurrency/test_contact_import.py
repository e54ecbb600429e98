"""A contact import racing an unsubscribe, on the single-threaded embedded AWS: the import's writes
(transactions for new contacts, UpdateItems for stored ones, several at a time) never turn an
unsubscribed contact back to subscribed, whichever request lands first."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from core import contacts
from core.auth import Caller
from core.ids import contact_id_for
from core.models import ContactModel, update_if
from core.schemas import ContactImport
from core.settings import Settings
from core.states import ContactStatus
from tests.conftest import FakeClock

pytestmark = pytest.mark.concurrency

ALICE = Caller("alice", frozenset())


def unsubscribe(contact_id: str, now: float) -> bool:
    """The unsubscribe link's write (core.suppression): conditional on a subscribed contact."""
    return update_if(
        ContactModel("alice", contact_id),
        [ContactModel.status.set(ContactStatus.UNSUBSCRIBED), ContactModel.updated_at.set(now)],
        ContactModel.contact_id.exists() & (ContactModel.status == ContactStatus.SUBSCRIBED),
    )


def rows(*emails: str, name: str) -> ContactImport:
    return ContactImport.model_validate({"contacts": [{"email": email, "name": name} for email in emails]})


def stored(contact_id: str) -> ContactModel:
    return ContactModel.get("alice", contact_id, consistent_read=True)


def test_unsubscribes_between_the_read_and_the_writes_are_kept(
    aws_server: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given ann stored and subscribed
    clock = FakeClock()
    contacts.import_contacts(ALICE, rows("ann@example.com", name="Ann"), clock)
    ann, nick, mia = (contact_id_for(f"{who}@example.com") for who in ("ann", "nick", "mia"))
    created_elsewhere = clock.now() + 10

    # and, once the import has read which contacts are stored, other writers act: ann unsubscribes
    # (stored when read: written by UpdateItem), and nick (absent when read: written in a
    # transaction) is created by another import and unsubscribes at once
    read_stored = contacts._stored_ids

    def stored_then_others_write(user_id: str, contact_ids: Any) -> set[str]:
        found = read_stored(user_id, contact_ids)
        assert unsubscribe(ann, created_elsewhere)
        ContactModel(
            "alice",
            nick,
            email="nick@example.com",
            name="Nick",
            status=ContactStatus.SUBSCRIBED,
            created_at=created_elsewhere,
            updated_at=created_elsewhere,
        ).save()
        assert unsubscribe(nick, created_elsewhere)
        return found

    monkeypatch.setattr(contacts, "_stored_ids", stored_then_others_write)
    clock.advance(3600)

    # When the import writes ann, nick and the new mia
    contacts.import_contacts(ALICE, rows("ann@example.com", "nick@example.com", "mia@example.com", name="New"), clock)

    # Then the unsubscribed stay so, with the import's fields merged in and their created_at kept
    for contact_id in (ann, nick):
        contact = stored(contact_id)
        assert (contact.status, contact.name, contact.updated_at) == ("unsubscribed", "New", clock.now())
    assert stored(nick).created_at == created_elsewhere
    assert (stored(mia).status, stored(mia).created_at) == ("subscribed", clock.now())


def test_unsubscribes_racing_the_import_are_all_kept(aws_server: Settings) -> None:
    # Given 300 stored, subscribed contacts
    clock = FakeClock()
    old = [f"old{number}@example.com" for number in range(300)]
    new = [f"new{number}@example.com" for number in range(300)]
    contacts.import_contacts(ALICE, rows(*old, name="Old"), clock)
    clock.advance(60)

    # When they unsubscribe one by one while an import rewrites them and adds 300 new ones
    start_together = threading.Barrier(2)

    def import_all() -> None:
        start_together.wait()
        contacts.import_contacts(ALICE, rows(*old, *new, name="Again"), clock)

    def unsubscribe_all() -> list[bool]:
        start_together.wait()
        return [unsubscribe(contact_id_for(email), clock.now()) for email in old]

    with ThreadPoolExecutor(max_workers=2) as pool:
        imported = pool.submit(import_all)
        unsubscribed = pool.submit(unsubscribe_all)
        imported.result()
        assert all(unsubscribed.result())

    # Then every unsubscribe holds, every row was merged, and the new contacts are subscribed
    everyone = {contact.email: contact for contact in ContactModel.query("alice", consistent_read=True)}
    assert len(everyone) == 600
    assert {everyone[email].status for email in old} == {"unsubscribed"}
    assert {everyone[email].status for email in new} == {"subscribed"}
    assert {contact.name for contact in everyone.values()} == {"Again"}
