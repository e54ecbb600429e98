"""A contact import racing an unsubscribe, on the single-threaded embedded AWS: the import's writes
(transactions of 100 contacts, several at a time) never turn an
unsubscribed contact back to subscribed, whichever request lands first."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from botocore.exceptions import ClientError
from pynamodb.exceptions import UpdateError

from core.api import contacts
from core.api.auth import Caller
from core.api.schemas import ContactImport
from core.settings import Settings
from core.states import ContactStatus
from core.storage.ids import contact_id_for
from core.storage.models import ContactModel, UserModel, update_if
from tests.conftest import FakeClock

pytestmark = pytest.mark.concurrency

ALICE = Caller("alice", frozenset())


def unsubscribe(contact_id: str, now: float) -> bool:
    """The unsubscribe link's write (core.api.suppression): conditional on a subscribed contact."""
    return update_if(
        ContactModel("alice", contact_id),
        [ContactModel.status.set(ContactStatus.UNSUBSCRIBED), ContactModel.updated_at.set(now)],
        ContactModel.contact_id.exists() & (ContactModel.status == ContactStatus.SUBSCRIBED),
    )


def rows(*emails: str, name: str) -> ContactImport:
    return ContactImport.model_validate({"contacts": [{"email": email, "name": name} for email in emails]})


def stored(contact_id: str) -> ContactModel:
    return ContactModel.get("alice", contact_id, consistent_read=True)


@pytest.fixture(autouse=True)
def alice(aws_server: Settings) -> None:
    UserModel("alice", email="alice@example.com", quota=0, remaining_quota=0, created_at=0).save()


def test_an_update_refused_by_a_running_transaction_is_retried_not_failed(
    aws_server: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given ann stored, and DynamoDB refusing the next UpdateItem on her because an import's
    # transaction holds the item (TransactionConflictException, which botocore does not retry)
    clock = FakeClock()
    contacts.import_contacts(ALICE, rows("ann@example.com", name="Ann"), clock)
    ann = contact_id_for("ann@example.com")
    refused: list[str] = []
    update = ContactModel.update

    def conflict_once(self: ContactModel, *args: Any, **kwargs: Any) -> Any:
        if not refused:
            refused.append(self.contact_id)
            raise UpdateError(
                "conflict",
                cause=ClientError(
                    {"Error": {"Code": "TransactionConflictException", "Message": "in a transaction"}}, "UpdateItem"
                ),
            )
        return update(self, *args, **kwargs)

    monkeypatch.setattr(ContactModel, "update", conflict_once)
    # When the unsubscribe link's write lands
    assert unsubscribe(ann, clock.now())
    # Then it was refused once, retried, and holds
    assert refused == [ann]
    assert stored(ann).status == "unsubscribed"


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
