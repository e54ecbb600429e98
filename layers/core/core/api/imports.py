"""Bulk CSV imports as the API serves them: an import created with a presigned upload URL, then read
(progress, row errors, the error report) and listed. The import itself runs in the import function
(core.audience.imports). Imports are keyed by tenant, so another tenant's import is not found (404)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from core.api.auth import Caller
from core.api.import_schemas import ImportCreated, ImportIn, ImportOut, ImportPage, ImportRowError
from core.api.ownership import require_tenant
from core.api.paging import decode_cursor, encode_cursor
from core.audience.csv_rows import MAX_IMPORT_BYTES
from core.audience.imports import ImportStatus
from core.audience.uploads import CSV_CONTENT_TYPE, Uploads, object_key
from core.clock import Clock, iso
from core.errors import NotFound
from core.storage.ids import new_id
from core.storage.models import ImportModel

IMPORT_ID_PATTERN = r"imp_[0-9a-f]{24}"
UPLOAD_URL_SECONDS = 15 * 60
REPORT_URL_SECONDS = 15 * 60


@dataclass
class ImportApiDeps:
    clock: Clock
    uploads: Uploads


def create_import(caller: Caller, request: ImportIn | None, deps: ImportApiDeps) -> ImportCreated:
    require_tenant(caller)
    now = deps.clock.now()
    import_id = new_id("imp")
    key = object_key(caller.user_id, import_id)
    item = ImportModel(
        caller.user_id,
        import_id,
        status=ImportStatus.PENDING_UPLOAD.value,
        filename=request.filename if request else None,
        object_key=key,
        upload_expires_at=now + UPLOAD_URL_SECONDS,
        created_at=now,
        updated_at=now,
    )
    item.save(condition=ImportModel.import_id.does_not_exist())
    return ImportCreated(
        import_id=import_id,
        status=item.status,
        upload_url=deps.uploads.upload_url(key, UPLOAD_URL_SECONDS),
        headers={"Content-Type": CSV_CONTENT_TYPE},
        expires_at=iso(now + UPLOAD_URL_SECONDS),
        max_bytes=MAX_IMPORT_BYTES,
    )


def get_import(caller: Caller, import_id: str, deps: ImportApiDeps) -> ImportOut:
    if not re.fullmatch(IMPORT_ID_PATTERN, import_id):
        raise NotFound("import", import_id)
    try:
        item = ImportModel.get(caller.user_id, import_id, consistent_read=True)
    except ImportModel.DoesNotExist as error:
        raise NotFound("import", import_id) from error
    return import_out(item, deps.uploads)


def list_imports(caller: Caller, cursor: str | None, limit: int, deps: ImportApiDeps) -> ImportPage:
    """The caller's imports, newest first (ids are time-ordered)."""
    before = decode_cursor(cursor, IMPORT_ID_PATTERN)
    items = list(
        ImportModel.query(
            caller.user_id,
            range_key_condition=ImportModel.import_id < before if before else None,
            scan_index_forward=False,
            limit=limit + 1,
        )
    )
    more = len(items) > limit
    items = items[:limit]
    return ImportPage(
        imports=[import_out(item, None, detail=False) for item in items],
        cursor=encode_cursor(items[-1].import_id) if more else None,
    )


def import_out(item: ImportModel, uploads: Uploads | None, detail: bool = True) -> ImportOut:
    """The import as shown. Its row errors and the report's URL only when reading one import (a
    list shows the counts)."""
    report = item.error_report_key
    return ImportOut(
        import_id=item.import_id,
        status=item.status,
        phase=item.phase if item.status == ImportStatus.IMPORTING else None,
        filename=item.filename,
        reason=item.reason,
        duplicate_of=item.duplicate_of,
        bytes_total=_int(item.bytes_total),
        bytes_done=int(item.bytes_done or 0),
        rows_total=_int(item.rows_total),
        rows_done=int(item.rows_done or 0),
        rows_imported=int(item.rows_imported or 0),
        rows_failed=int(item.rows_failed or 0),
        errors=[ImportRowError.model_validate(error) for error in item.errors or []] if detail else [],
        error_report_url=uploads.download_url(report, REPORT_URL_SECONDS) if detail and uploads and report else None,
        created_at=iso(item.created_at),
        updated_at=iso(item.updated_at),
        started_at=iso(item.started_at) if item.started_at is not None else None,
        finished_at=iso(item.finished_at) if item.finished_at is not None else None,
    )


def _int(value: float | None) -> int | None:
    return None if value is None else int(value)
