"""Contacts: bulk import (upsert by address) and paged listing of a user's own contacts.

An import merges each row into the stored contact with one update expression (`_merge_actions`): it
SETs the fields the row gives and writes `status` and `created_at` only `if_not_exists`, so a bounce
or unsubscribe recorded by another writer is kept whatever runs concurrently; the expression, not an
earlier read, is the guarantee. (A BatchWrite put replaces the whole item: it would undo such a
change, so contacts are never put.)

Speed: contacts are written 100 to a TransactWriteItems request (the same expression per item;
two write units an item instead of one), several requests at a time, so 1,000 rows are 10 requests.
DynamoDB refuses an UpdateItem on an item inside a running transaction
(TransactionConflictException, which the SDK does not retry): every conditional update of a
contact goes through `core.storage.models.update_if`, which retries it, so a concurrent unsubscribe waits
a few milliseconds instead of failing; a transaction cancelled by such a conflict is retried here.

Everything is validated (by the schema) before the first write. A DynamoDB failure half way leaves
some contacts imported and is answered ServiceUnavailable (503): importing the same request again
is safe (it is an upsert)."""

from __future__ import annotations

from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from typing import Any

from pynamodb.connection import Connection
from pynamodb.exceptions import PynamoDBException, TransactWriteError
from pynamodb.expressions.update import Action
from pynamodb.transactions import TransactWrite

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
    unique,
)
from core.clock import Clock, backoff, iso
from core.errors import ServiceUnavailable
from core.states import ContactStatus
from core.storage.ids import contact_id_for
from core.storage.models import ContactModel, transaction_connection

CONTACT_ID_PATTERN = r"ct_[0-9a-f]{24}"
_BATCH_GET_LIMIT = 100
TRANSACTION_LIMIT = 100  # DynamoDB's TransactWriteItems maximum
# Requests in flight at once; below PynamoDB's 10 pooled connections per client, so none is dropped.
IMPORT_WRITERS = 8
_TRANSACTION_ATTEMPTS = 5
# Cancellation reasons that another attempt can clear: a concurrent write of one of the contacts
# (an unsubscribe, another import: TransactionConflict) or throttling.
_RETRYABLE_REASONS = frozenset({"TransactionConflict", "ThrottlingError", "ProvisionedThroughputExceeded"})


def import_contacts(
    caller: Caller, request: ContactImport, clock: Clock, writers: int = IMPORT_WRITERS
) -> ContactImported:
    # An address given twice in one request is one contact; the later row wins.
    # (A dict keeps first-seen key order and the last value assigned.)
    latest: dict[str, ContactIn] = {}
    for row in request.contacts:
        latest[contact_id_for(str(row.email))] = row
    require_tenant(caller)
    now = clock.now()
    user_id = caller.user_id
    rows = list(latest.items())
    try:
        connection = transaction_connection()
        connection.client  # noqa: B018 - made once here, not by several threads racing to make it
        with ThreadPoolExecutor(max_workers=writers) as pool:
            _wait_all([pool.submit(_merge_rows, connection, user_id, chunk, now, clock) for chunk in _chunks(rows)])
    except PynamoDBException as error:
        raise ServiceUnavailable(
            "the contacts table refused a write; some contacts may be imported. "
            "Send the same request again: an import is safe to repeat"
        ) from error
    return ContactImported(contact_ids=list(latest))


def _wait_all(writes: list[Future[None]]) -> None:
    """Waits for every write; at the first failure drops those not started, lets those running end
    (nothing writes after the reply) and raises it."""
    wait(writes, return_when=FIRST_EXCEPTION)
    for write in writes:
        write.cancel()
    failures = [write.exception() for write in writes if not write.cancelled()]
    for failure in failures:
        if failure is not None:
            raise failure


def _merge_rows(
    connection: Connection, user_id: str, rows: list[tuple[str, ContactIn]], now: float, clock: Clock
) -> None:
    """Merges up to 100 contacts in one transaction, retried while DynamoDB cancels it only for
    reasons that pass (a concurrent write of one of them, throttling)."""
    for attempt in range(_TRANSACTION_ATTEMPTS):
        try:
            with TransactWrite(connection=connection) as transaction:
                for contact_id, row in rows:
                    transaction.update(ContactModel(user_id, contact_id), _merge_actions(row, now))
            return
        except TransactWriteError as error:
            reasons = {reason.code for reason in error.cancellation_reasons if reason is not None}
            if not reasons or not reasons <= _RETRYABLE_REASONS or attempt == _TRANSACTION_ATTEMPTS - 1:
                raise
        clock.sleep(backoff(attempt, cap=1.0))


def _merge_actions(row: ContactIn, now: float) -> list[Action]:
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
    return actions


def _chunks(rows: list[tuple[str, ContactIn]]) -> list[list[tuple[str, ContactIn]]]:
    return [rows[start : start + TRANSACTION_LIMIT] for start in range(0, len(rows), TRANSACTION_LIMIT)]


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
