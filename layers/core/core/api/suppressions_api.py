"""The suppression list as the API serves it: a tenant's own list (an administrator may name a
user), paged, added to by hand, exported as CSV, and entries removed. Writing goes through
core.suppressions, the one place an address is suppressed."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass

from pydantic import TypeAdapter, ValidationError

from core.api.auth import Caller
from core.api.ownership import tenant_user
from core.api.paging import decode_cursor, encode_cursor
from core.api.schemas import EmailAddress
from core.api.suppression_schemas import (
    MAX_EXPORT_ROWS,
    SuppressionOut,
    SuppressionPage,
    SuppressionRemoved,
    SuppressionResult,
    SuppressionsAdded,
    SuppressionsIn,
)
from core.clock import Clock, iso
from core.errors import InvalidInput, NotFound
from core.states import SuppressionReason
from core.storage.ids import contact_id_for
from core.storage.models import SuppressionModel, UserModel
from core.suppressions import suppress_many, unsuppress

CONTACT_ID_PATTERN = r"ct_[0-9a-f]{24}"
EXPORT_COLUMNS = ("email", "reason", "created_at", "detail")
_ADDRESS = TypeAdapter(EmailAddress)
# A spreadsheet opening the export runs a cell starting with one of these as a formula.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


class NotSuppressed(NotFound):
    """The address is not on the list. The reply does not repeat the address (nor its contact id,
    which another tenant's contact shares)."""

    def __init__(self) -> None:
        super().__init__("suppression", "", field="email")
        self.message = "the address is not on the suppression list"
        self.details = [{"field": "email", "reason": "not on the suppression list"}]


def list_owner(caller: Caller, user_id: str | None) -> str:
    """Whose list a request reads or writes: the caller's own; an administrator may name any user
    that exists. Another user's id from a tenant is 404, as for every other tenant's item."""
    if user_id is None or user_id == caller.user_id:
        return caller.user_id
    if not caller.is_admin:
        raise NotFound("user", user_id, field="user_id")
    try:
        UserModel.get(user_id, consistent_read=True)
    except UserModel.DoesNotExist as error:
        raise NotFound("user", user_id, field="user_id") from error
    return user_id


def suppression_out(entry: SuppressionModel) -> SuppressionOut:
    return SuppressionOut(
        email=entry.email,
        contact_id=entry.contact_id,
        reason=entry.reason,
        detail=entry.detail,
        created_at=iso(entry.created_at),
        updated_at=iso(entry.updated_at) if entry.updated_at is not None else None,
    )


def _entries(user_id: str, reason: str | None, after: str | None, limit: int) -> Iterator[SuppressionModel]:
    return SuppressionModel.query(
        user_id,
        range_key_condition=SuppressionModel.contact_id > after if after else None,
        filter_condition=SuppressionModel.reason == reason if reason else None,
        limit=limit,
        consistent_read=True,
    )


def list_suppressions(
    caller: Caller, user_id: str | None, reason: str | None, cursor: str | None, limit: int
) -> SuppressionPage:
    owner = list_owner(caller, user_id)
    after = decode_cursor(cursor, CONTACT_ID_PATTERN)
    # One more than the page tells whether a next page exists, so the last page has no cursor.
    entries = list(_entries(owner, reason, after, limit + 1))
    more = len(entries) > limit
    entries = entries[:limit]
    return SuppressionPage(
        suppressions=[suppression_out(entry) for entry in entries],
        cursor=encode_cursor(entries[-1].contact_id) if more else None,
    )


def add_suppressions(caller: Caller, user_id: str | None, request: SuppressionsIn, clock: Clock) -> SuppressionsAdded:
    owner = list_owner(caller, user_id)
    if owner == caller.user_id:
        tenant_user(caller)  # only tenants have a list to add to (403 otherwise)
    emails = [str(email) for email in request.emails]
    # `manual` only: never mirrored to SES's account-level list (that is for bounces and complaints).
    outcomes = suppress_many(owner, emails, SuppressionReason(request.reason), clock.now(), detail=request.detail)
    results: dict[str, SuppressionResult] = {}
    for email, outcome in zip(emails, outcomes, strict=True):
        contact_id = contact_id_for(email)
        results.setdefault(
            contact_id,
            SuppressionResult(
                email=email,
                contact_id=contact_id,
                added=outcome.added,
                reason=outcome.reason.value,
                suppressed_subtasks=outcome.suppressed_subtasks,
            ),
        )
    return SuppressionsAdded(results=list(results.values()))


def parse_address(raw: str) -> str:
    """The address named in a path (URL-encoded by the client), validated as contacts' are."""
    try:
        return str(_ADDRESS.validate_python(raw))
    except ValidationError as error:
        reason = error.errors()[0].get("msg", "not a valid email address") if error.errors() else "invalid"
        raise InvalidInput("email", str(reason)) from error


def remove_suppression(
    caller: Caller, user_id: str | None, email: str, force: bool, clock: Clock
) -> SuppressionRemoved:
    owner = list_owner(caller, user_id)
    address = parse_address(email)
    if not unsuppress(owner, address, clock.now(), force=force):
        raise NotSuppressed
    return SuppressionRemoved(email=address, contact_id=contact_id_for(address), removed=True)


@dataclass(frozen=True)
class CsvExport:
    text: str
    rows: int
    next_cursor: str | None  # set when the list goes on past MAX_EXPORT_ROWS


def _cell(value: str) -> str:
    return f"'{value}" if value.startswith(_FORMULA_STARTS) else value


def export_suppressions(
    caller: Caller, user_id: str | None, reason: str | None, cursor: str | None, max_rows: int = MAX_EXPORT_ROWS
) -> CsvExport:
    """The list as CSV (EXPORT_COLUMNS), read page by page (DynamoDB's 1 MB pages) into one reply of
    at most `max_rows` rows; cells a spreadsheet would run as formulas are prefixed with `'`."""
    owner = list_owner(caller, user_id)
    after = decode_cursor(cursor, CONTACT_ID_PATTERN)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(EXPORT_COLUMNS)
    rows = 0
    last: str | None = None
    more = False
    for entry in _entries(owner, reason, after, max_rows + 1):
        if rows == max_rows:
            more = True
            break
        writer.writerow([_cell(entry.email), entry.reason, iso(entry.created_at), _cell(entry.detail or "")])
        rows += 1
        last = entry.contact_id
    return CsvExport(out.getvalue(), rows, encode_cursor(last) if more and last else None)
