"""Contacts: bulk import (upsert by address) and paged listing of a user's own contacts.

Why one conditional UpdateItem per contact rather than BatchGet + BatchWrite: a BatchWrite put
replaces the whole item, so a bounce or unsubscribe recorded by the SES-events function between our
read and our write would be overwritten back to `subscribed`. An UpdateItem that SETs only the
imported fields and writes `status` / `created_at` with `if_not_exists` keeps them, whatever runs
concurrently; the condition, not an earlier read, is the guarantee. The cost is one write request
per contact (1,000 per request at most, a few seconds); batching would save no write capacity.

Everything is validated (by the schema) before the first write. A failure of DynamoDB half way
leaves some contacts imported; importing the same request again is safe (it is an upsert)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pynamodb.expressions.update import Action

from core.auth import Caller
from core.clock import Clock, iso
from core.ids import contact_id_for
from core.models import ContactModel
from core.paging import decode_cursor, encode_cursor
from core.schemas import (
    DEFAULT_PAGE_SIZE,
    ContactImport,
    ContactImported,
    ContactIn,
    ContactOut,
    ContactPage,
    is_identifier,
    unique,
)
from core.states import ContactStatus

CONTACT_ID_PATTERN = r"ct_[0-9a-f]{24}"
_BATCH_GET_LIMIT = 100


def import_contacts(caller: Caller, request: ContactImport, clock: Clock) -> ContactImported:
    # An address given twice in one request is one contact; the later row wins.
    # (A dict keeps first-seen key order and the last value assigned.)
    latest: dict[str, ContactIn] = {}
    for row in request.contacts:
        latest[contact_id_for(str(row.email))] = row
    now = clock.now()
    for contact_id, row in latest.items():
        _upsert(caller.user_id, contact_id, row, now)
    return ContactImported(contact_ids=list(latest))


def _upsert(user_id: str, contact_id: str, row: ContactIn, now: float) -> None:
    given = row.model_fields_set
    actions: list[Action] = [
        ContactModel.email.set(str(row.email)),
        ContactModel.updated_at.set(now),
        # Never changed by an import: a suppressed contact stays suppressed.
        ContactModel.status.set(ContactModel.status | ContactStatus.SUBSCRIBED.value),
        ContactModel.created_at.set(ContactModel.created_at | now),
    ]
    # A field the row gives replaces the stored one; a field it omits is kept (or defaulted).
    tags = unique(row.tags)
    if "tags" in given:
        actions.append(ContactModel.tags.set(tags))
    else:
        actions.append(ContactModel.tags.set(ContactModel.tags | []))
    if "attributes" in given:
        actions.append(ContactModel.attributes.set(row.attributes))
    else:
        actions.append(ContactModel.attributes.set(ContactModel.attributes | {}))
    for field, value in (("name", row.name), ("timezone", row.timezone)):
        if field in given:
            attribute = getattr(ContactModel, field)
            actions.append(attribute.remove() if value is None else attribute.set(value))
    ContactModel(user_id, contact_id).update(actions=actions)


def list_contacts(
    caller: Caller, tag: str | None = None, cursor: str | None = None, limit: int = DEFAULT_PAGE_SIZE
) -> ContactPage:
    after = decode_cursor(cursor, CONTACT_ID_PATTERN)
    key_condition = ContactModel.contact_id > after if after else None
    tag_filter = ContactModel.tags.contains(tag) if tag else None
    # One more than the page tells whether a next page exists, so the last page has no cursor.
    contacts = list(
        ContactModel.query(
            caller.user_id,
            range_key_condition=key_condition,
            filter_condition=tag_filter,
            limit=limit + 1,
        )
    )
    more = len(contacts) > limit
    contacts = contacts[:limit]
    return ContactPage(
        contacts=[contact_out(contact) for contact in contacts],
        cursor=encode_cursor(contacts[-1].contact_id) if more else None,
    )


def load_contacts(user_id: str, contact_ids: Iterable[str]) -> dict[str, ContactModel]:
    """The user's contacts among `contact_ids`, by id (BatchGet, 100 keys a call). Ids the user
    does not have, another user's included, are simply absent: the caller decides what that means."""
    wanted = unique([contact_id for contact_id in contact_ids if is_identifier(contact_id)])
    found: dict[str, ContactModel] = {}
    for start in range(0, len(wanted), _BATCH_GET_LIMIT):
        keys = [(user_id, contact_id) for contact_id in wanted[start : start + _BATCH_GET_LIMIT]]
        for contact in ContactModel.batch_get(keys, consistent_read=True):
            found[contact.contact_id] = contact
    return found


def contact_out(contact: ContactModel) -> ContactOut:
    return ContactOut(
        contact_id=contact.contact_id,
        email=contact.email,
        name=contact.name,
        tags=list(contact.tags or []),
        attributes=_plain(contact.attributes),
        timezone=contact.timezone,
        status=contact.status,
        created_at=iso(contact.created_at),
        updated_at=iso(contact.updated_at),
    )


def _plain(attributes: Any) -> dict[str, Any]:
    """A raw MapAttribute as a plain dict (numbers come back as int or float)."""
    if attributes is None:
        return {}
    return dict(attributes.as_dict() if hasattr(attributes, "as_dict") else attributes)
