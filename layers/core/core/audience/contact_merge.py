"""Contacts merged into a tenant's list: one update expression per contact, shared by the JSON
import (`POST /api/contacts`) and the CSV import (core.audience.imports).

`merge_actions` SETs the fields a row gives and writes `status` and `created_at` only
`if_not_exists`, so a bounce or unsubscribe recorded by another writer is kept whatever runs
concurrently; the expression, not an earlier read, is the guarantee. (A BatchWrite put replaces the
whole item: it would undo such a change, so contacts are never put.) The one exception is an address
on the tenant's suppression list: its contact takes the status its suppression reason gives
(`CONTACT_STATUS_OF_REASON`), so importing a suppressed address never makes it mailable.

Speed: contacts are written 100 to a TransactWriteItems request (the same expression per item;
two write units an item instead of one), several requests at a time. DynamoDB refuses an
UpdateItem on an item inside a running transaction (TransactionConflictException, which the SDK
does not retry): every conditional update of a contact goes through `update_if`, which retries
it, and a transaction cancelled by such a conflict is retried here."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait

from pynamodb.connection import Connection
from pynamodb.exceptions import TransactWriteError
from pynamodb.expressions.update import Action
from pynamodb.transactions import TransactWrite

from core.api.schemas import ContactIn, unique
from core.clock import Clock, backoff
from core.states import CONTACT_STATUS_OF_REASON, ContactStatus, SuppressionReason
from core.storage.models import ContactModel, transaction_connection
from core.suppressions import suppressed_reasons

TRANSACTION_LIMIT = 100  # DynamoDB's TransactWriteItems maximum
# Requests in flight at once; below PynamoDB's 10 pooled connections per client, so none is dropped.
MERGE_WRITERS = 8
_TRANSACTION_ATTEMPTS = 5
# Cancellation reasons that another attempt can clear: a concurrent write of one of the contacts
# (an unsubscribe, another import: TransactionConflict) or throttling.
_RETRYABLE_REASONS = frozenset({"TransactionConflict", "ThrottlingError", "ProvisionedThroughputExceeded"})

Row = tuple[str, ContactIn]  # (contact id, the row)


def suppressed_statuses(user_id: str, contact_ids: Iterable[str]) -> dict[str, ContactStatus]:
    """The contact status each of `contact_ids` on the tenant's suppression list must have
    (core.suppressions.suppressed_reasons); addresses not on it are absent."""
    statuses: dict[str, ContactStatus] = {}
    for contact_id, reason in suppressed_reasons(user_id, list(contact_ids)).items():
        try:
            statuses[contact_id] = CONTACT_STATUS_OF_REASON[SuppressionReason(reason)]
        except ValueError:  # a reason this code does not know still keeps the address unmailable
            statuses[contact_id] = ContactStatus.SUPPRESSED
    return statuses


def merge_actions(row: ContactIn, now: float, suppressed_as: ContactStatus | None = None) -> list[Action]:
    given = row.model_fields_set
    status = (
        ContactModel.status.set(suppressed_as.value)
        if suppressed_as is not None
        # Never changed by an import otherwise: a suppressed contact stays suppressed.
        else ContactModel.status.set(ContactModel.status | ContactStatus.SUBSCRIBED.value)
    )
    actions: list[Action] = [
        ContactModel.email.set(str(row.email)),
        ContactModel.updated_at.set(now),
        status,
        ContactModel.created_at.set(ContactModel.created_at | now),
    ]
    # A field the row gives replaces the stored one; a field it omits is kept (or defaulted).
    if "tags" in given:
        actions.append(ContactModel.tags.set(unique(row.tags)))
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


def merge_contacts(
    user_id: str,
    rows: Sequence[Row],
    now: float,
    clock: Clock,
    suppressed: Mapping[str, ContactStatus] | None = None,
    writers: int = MERGE_WRITERS,
) -> None:
    """Merges `rows` (distinct contact ids) into the tenant's contacts, 100 to a transaction,
    `writers` transactions at a time; raises the first failure (PynamoDBException) once the
    transactions already running have ended (nothing writes after this returns)."""
    if not rows:
        return
    statuses = suppressed or {}
    connection = transaction_connection()
    connection.client  # noqa: B018 - made once here, not by several threads racing to make it
    chunks = [rows[start : start + TRANSACTION_LIMIT] for start in range(0, len(rows), TRANSACTION_LIMIT)]
    if len(chunks) == 1 or writers <= 1:
        for chunk in chunks:
            _merge_chunk(connection, user_id, chunk, now, clock, statuses)
        return
    with ThreadPoolExecutor(max_workers=min(writers, len(chunks))) as pool:
        _wait_all([pool.submit(_merge_chunk, connection, user_id, chunk, now, clock, statuses) for chunk in chunks])


def _wait_all(writes: list[Future[None]]) -> None:
    """Waits for every write; at the first failure drops those not started, lets those running end
    and raises it."""
    wait(writes, return_when=FIRST_EXCEPTION)
    for write in writes:
        write.cancel()
    failures = [write.exception() for write in writes if not write.cancelled()]
    for failure in failures:
        if failure is not None:
            raise failure


def _merge_chunk(
    connection: Connection,
    user_id: str,
    rows: Sequence[Row],
    now: float,
    clock: Clock,
    statuses: Mapping[str, ContactStatus],
) -> None:
    """Up to 100 contacts in one transaction, retried while DynamoDB cancels it only for reasons
    that pass (a concurrent write of one of them, throttling)."""
    for attempt in range(_TRANSACTION_ATTEMPTS):
        try:
            with TransactWrite(connection=connection) as transaction:
                for contact_id, row in rows:
                    actions = merge_actions(row, now, statuses.get(contact_id))
                    transaction.update(ContactModel(user_id, contact_id), actions)
            return
        except TransactWriteError as error:
            reasons = {reason.code for reason in error.cancellation_reasons if reason is not None}
            if not reasons or not reasons <= _RETRYABLE_REASONS or attempt == _TRANSACTION_ATTEMPTS - 1:
                raise
        clock.sleep(backoff(attempt, cap=1.0))
