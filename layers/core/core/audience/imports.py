"""A CSV import, run by the import function: checked whole, then written in chunks that commit
with the cursor, so it resumes where it stopped and counts every row once.

    pending_upload --(S3 ObjectCreated)--> importing/checking --> importing/writing --> completed
                                             \\--> failed (file-level reason, nothing written)

- Start: the object's size and ETag are read (HeadObject). Over `MAX_IMPORT_BYTES` fails. The same
  bytes (ETag and size) as one of the tenant's completed imports finish at once as `completed`,
  `duplicate_of` that import: re-uploading a file writes nothing, so no contact field, counter or
  `updated_at` moves. The move out of `pending_upload` is conditional: a redelivered event finds
  the import started and continues it instead.
- Check pass: the whole file is read once (encoding, header, row size, row count) before any
  contact is written, so a file-level problem fails the import with nothing half-written; it
  counts `rows_total`.
- Write pass, one chunk (`chunk_rows` records) at a time: the rows are validated as
  `POST /api/contacts` validates them, rows of one address combined (the later wins for each field
  it gives), merged into the contacts (core.audience.contact_merge; addresses on the tenant's
  suppression list take its status), the chunk's row errors written to S3, then one UpdateItem
  moves the cursor (`bytes_done`, `lines_done`) and adds the chunk's counts, on the condition that
  the cursor is still where this chunk started. A crash before it leaves the cursor where it was: the
  next invocation writes the same chunk again (the merge is an upsert of the same values), and the
  counts move once. Reads are pinned to the ETag: a file replaced meanwhile fails the import.
- Before the Lambda deadline the invocation stops between chunks and enqueues a continuation.
- Finish: the chunks' error parts are joined into one report CSV, then the import completes
  (conditional on the cursor at the end of the file)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from pynamodb.expressions.update import Action

from core.api.schemas import ContactIn
from core.audience.contact_merge import merge_contacts, suppressed_statuses
from core.audience.csv_rows import (
    ERROR_REPORT_HEADER,
    MAX_IMPORT_BYTES,
    MAX_IMPORT_ROWS,
    FileRejected,
    LineFeed,
    Records,
    RowError,
    combined,
    contact_of,
    error_report_lines,
    parse_header,
)
from core.audience.import_jobs import ImportJob
from core.audience.uploads import UploadChanged, Uploads, report_key, report_part_key
from core.clock import Clock
from core.storage.ids import contact_id_for
from core.storage.models import ImportModel, update_if

log = logging.getLogger(__name__)

MAX_ERRORS_KEPT = 1000  # row errors on the import item; all of them are in the report


class ImportStatus(StrEnum):
    PENDING_UPLOAD = "pending_upload"
    IMPORTING = "importing"
    COMPLETED = "completed"
    FAILED = "failed"


class ImportPhase(StrEnum):
    CHECKING = "checking"
    WRITING = "writing"


FINISHED = frozenset({ImportStatus.COMPLETED, ImportStatus.FAILED})


class ImportOutcome(StrEnum):
    DONE = "done"  # completed or failed
    CONTINUE = "continue"  # stopped before the deadline: a continuation must follow
    SKIPPED = "skipped"  # nothing to do (finished already, unknown, or another invocation moved it)


@dataclass
class ImportDeps:
    clock: Clock
    uploads: Uploads
    seconds_left: Callable[[], float]  # of this invocation, safety margin taken off
    chunk_rows: int = 1000


def run_import(job: ImportJob, deps: ImportDeps) -> ImportOutcome:
    try:
        item = ImportModel.get(job.user_id, job.import_id, consistent_read=True)
    except ImportModel.DoesNotExist:
        log.warning("upload for an unknown import", extra={"user_id": job.user_id, "import_id": job.import_id})
        return ImportOutcome.SKIPPED
    if item.status in FINISHED:
        return ImportOutcome.SKIPPED
    try:
        if item.status == ImportStatus.PENDING_UPLOAD:
            started = _start(item, deps)
            if started is None:
                return ImportOutcome.DONE
            item = started
        item.update(actions=[ImportModel.invocations.add(1)])
        if item.phase == ImportPhase.CHECKING and not _check(item, deps):
            return ImportOutcome.DONE
        return _write(item, deps)
    except FileRejected as rejected:
        _fail(item, rejected.reason, deps)
    except UploadChanged as changed:
        _fail(item, str(changed), deps)
    return ImportOutcome.DONE


def _start(item: ImportModel, deps: ImportDeps) -> ImportModel | None:
    """Moves a pending import to `importing`; None when it finished instead (failed or duplicate)."""
    now = deps.clock.now()
    stored = deps.uploads.stored(str(item.object_key))
    if stored is None:
        _fail(item, "the uploaded file is gone (expired or deleted)", deps)
        return None
    if stored.size > MAX_IMPORT_BYTES:
        _fail(item, f"the file is {stored.size} bytes; at most {MAX_IMPORT_BYTES} (100 MB)", deps)
        return None
    pending = ImportModel.status == ImportStatus.PENDING_UPLOAD.value
    original = _same_bytes(item, stored.etag, stored.size)
    common: list[Action] = [
        ImportModel.etag.set(stored.etag),
        ImportModel.bytes_total.set(stored.size),
        ImportModel.started_at.set(now),
        ImportModel.updated_at.set(now),
    ]
    if original is not None:
        done = [
            ImportModel.status.set(ImportStatus.COMPLETED.value),
            ImportModel.duplicate_of.set(original),
            ImportModel.finished_at.set(now),
            *common,
        ]
        update_if(item, done, pending)
        return None
    moved = update_if(
        item,
        [
            ImportModel.status.set(ImportStatus.IMPORTING.value),
            ImportModel.phase.set(ImportPhase.CHECKING.value),
            *common,
        ],
        pending,
    )
    if not moved:  # another invocation started it: carry on from what it wrote
        item.refresh(consistent_read=True)
        if item.status in FINISHED:
            return None
    return item


def _same_bytes(item: ImportModel, etag: str, size: int) -> str | None:
    """The tenant's completed import of the same object bytes (ETag of a single PUT is the MD5 of
    its content), if any: the original, never another duplicate."""
    condition = (
        (ImportModel.etag == etag)
        & (ImportModel.bytes_total == size)
        & (ImportModel.status == ImportStatus.COMPLETED.value)
        & ImportModel.duplicate_of.does_not_exist()
    )
    for other in ImportModel.query(item.user_id, filter_condition=condition):
        if other.import_id != item.import_id:
            return str(other.import_id)
    return None


def _check(item: ImportModel, deps: ImportDeps) -> bool:
    """The check pass: the whole file read once; the header saved and the cursor set after it.
    False when the import failed."""
    if not item.bytes_total:
        raise FileRejected("the file is empty: the first row must name the columns, one of them email")
    records = Records(LineFeed(deps.uploads.blocks(str(item.object_key), str(item.etag), 0, int(item.bytes_total))))
    header = records.next()
    if header is None:
        raise FileRejected("the file is empty: the first row must name the columns, one of them email")
    columns = parse_header(header.cells)
    data_offset, data_line = records.feed.offset, records.feed.line
    rows = 0
    while records.next() is not None:
        rows += 1
        if rows > MAX_IMPORT_ROWS:
            raise FileRejected(f"the file has more than {MAX_IMPORT_ROWS} rows")
    now = deps.clock.now()
    moved = update_if(
        item,
        [
            ImportModel.phase.set(ImportPhase.WRITING.value),
            ImportModel.columns.set(columns),
            ImportModel.rows_total.set(rows),
            ImportModel.bytes_done.set(data_offset),
            ImportModel.lines_done.set(data_line),
            ImportModel.updated_at.set(now),
        ],
        (ImportModel.status == ImportStatus.IMPORTING.value) & (ImportModel.phase == ImportPhase.CHECKING.value),
    )
    if not moved:
        item.refresh(consistent_read=True)
    return item.status == ImportStatus.IMPORTING and item.phase == ImportPhase.WRITING


def _write(item: ImportModel, deps: ImportDeps) -> ImportOutcome:
    user_id, import_id = str(item.user_id), str(item.import_id)
    columns = list(item.columns or [])
    total = int(item.bytes_total or 0)
    start = int(item.bytes_done)
    blocks = deps.uploads.blocks(str(item.object_key), str(item.etag), start, total)
    records = Records(LineFeed(blocks, start, int(item.lines_done)))
    while True:
        chunk_start = records.feed.offset
        contacts: dict[str, ContactIn] = {}
        errors: list[RowError] = []
        rows = 0
        while rows < deps.chunk_rows and (record := records.next()) is not None:
            rows += 1
            row = contact_of(columns, record)
            if isinstance(row, list):
                errors.extend(row)
                continue
            contact_id = contact_id_for(str(row.email))
            earlier = contacts.get(contact_id)
            contacts[contact_id] = row if earlier is None else combined(earlier, row)
        now = deps.clock.now()
        merge_contacts(user_id, list(contacts.items()), now, deps.clock, suppressed_statuses(user_id, contacts))
        if errors:
            deps.uploads.put_text(report_part_key(user_id, import_id, chunk_start), error_report_lines(errors))
        failed_rows = len({error.line for error in errors})
        kept = max(0, MAX_ERRORS_KEPT - len(item.errors or []))
        actions: list[Action] = [
            ImportModel.bytes_done.set(records.feed.offset),
            ImportModel.lines_done.set(records.feed.line),
            ImportModel.rows_done.add(rows),
            ImportModel.rows_imported.add(rows - failed_rows),
            ImportModel.rows_failed.add(failed_rows),
            ImportModel.chunks.add(1),
            ImportModel.updated_at.set(now),
        ]
        if errors and kept:
            actions.append(ImportModel.errors.set(ImportModel.errors.append([e.as_dict() for e in errors[:kept]])))
        committed = update_if(
            item,
            actions,
            (ImportModel.status == ImportStatus.IMPORTING.value) & (ImportModel.bytes_done == chunk_start),
        )
        if not committed:  # another invocation moved the cursor first; it carries on
            return ImportOutcome.SKIPPED
        if records.feed.offset >= total:
            _finish(item, deps)
            return ImportOutcome.DONE
        if deps.seconds_left() <= 0:
            return ImportOutcome.CONTINUE


def _finish(item: ImportModel, deps: ImportDeps) -> None:
    """The report of every row error (the chunks' parts joined in file order), then `completed`.
    The parts are deleted only after: a crash between leaves them for the next attempt."""
    user_id, import_id = str(item.user_id), str(item.import_id)
    parts: list[str] = []
    actions: list[Action] = []
    if int(item.rows_failed) > 0:
        parts = deps.uploads.keys_under(report_part_key(user_id, import_id, 0).rsplit("/", 1)[0] + "/")
        report = ERROR_REPORT_HEADER + "".join(deps.uploads.read_text(part) for part in parts)
        deps.uploads.put_text(report_key(user_id, import_id), report)
        actions.append(ImportModel.error_report_key.set(report_key(user_id, import_id)))
    now = deps.clock.now()
    update_if(
        item,
        [
            ImportModel.status.set(ImportStatus.COMPLETED.value),
            ImportModel.finished_at.set(now),
            ImportModel.updated_at.set(now),
            *actions,
        ],
        (ImportModel.status == ImportStatus.IMPORTING.value) & (ImportModel.bytes_done == item.bytes_done),
    )
    if parts:
        deps.uploads.delete(parts)


def _fail(item: ImportModel, reason: str, deps: ImportDeps) -> None:
    now = deps.clock.now()
    update_if(
        item,
        [
            ImportModel.status.set(ImportStatus.FAILED.value),
            ImportModel.reason.set(reason),
            ImportModel.finished_at.set(now),
            ImportModel.updated_at.set(now),
        ],
        ImportModel.status.is_in(ImportStatus.PENDING_UPLOAD.value, ImportStatus.IMPORTING.value),
    )
    log.info("import failed", extra={"user_id": item.user_id, "import_id": item.import_id, "reason": reason})
