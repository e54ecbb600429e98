"""Contacts: bulk import (upsert by address) and paged listing of a user's own contacts.

An import merges each row into the stored contact with the update expression of
`core.audience.contact_merge` (shared with the CSV import): it SETs the fields the row gives and
writes `status` and `created_at` only `if_not_exists`, so a bounce or unsubscribe recorded by
another writer is kept; an address on the tenant's suppression list takes the status its reason
gives. Contacts are written 100 to a TransactWriteItems request, several requests at a time, so
1,000 rows are 10 requests (plus 10 BatchGetItem of the suppression list).

Everything is validated (by the schema) before the first write. A DynamoDB failure half way leaves
some contacts imported and is answered ServiceUnavailable (503): importing the same request again
is safe (it is an upsert)."""

from __future__ import annotations

from typing import Any

from pynamodb.exceptions import PynamoDBException

from core.api.auth import Caller
from core.api.ownership import require_tenant
from core.api.paging import decode_cursor, encode_cursor
from core.api.schemas import (
    DEFAULT_PAGE_SIZE,
    ContactImport,
    ContactImported,
    ContactIn,
    ContactOut,
    ContactPage,
)
from core.audience.contact_merge import MERGE_WRITERS, merge_contacts, suppressed_statuses
from core.clock import Clock, iso
from core.errors import ServiceUnavailable
from core.storage.ids import contact_id_for
from core.storage.models import ContactModel

CONTACT_ID_PATTERN = r"ct_[0-9a-f]{24}"


def import_contacts(
    caller: Caller, request: ContactImport, clock: Clock, writers: int = MERGE_WRITERS
) -> ContactImported:
    # An address given twice in one request is one contact; the later row wins.
    # (A dict keeps first-seen key order and the last value assigned.)
    latest: dict[str, ContactIn] = {}
    for row in request.contacts:
        latest[contact_id_for(str(row.email))] = row
    require_tenant(caller)
    user_id = caller.user_id
    try:
        suppressed = suppressed_statuses(user_id, latest)
        merge_contacts(user_id, list(latest.items()), clock.now(), clock, suppressed, writers)
    except PynamoDBException as error:
        raise ServiceUnavailable(
            "the contacts table refused a write; some contacts may be imported. "
            "Send the same request again: an import is safe to repeat"
        ) from error
    return ContactImported(contact_ids=list(latest))


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
