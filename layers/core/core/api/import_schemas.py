"""Input and output shapes of the bulk import routes (`/api/imports`)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from core.api.schemas import Name, StrictModel

DEFAULT_IMPORTS_PAGE = 20
MAX_IMPORTS_PAGE = 100


class ImportIn(StrictModel):
    """Optional: what the tenant calls the file, shown back in the import."""

    filename: Name | None = None


class ImportCreated(BaseModel):
    import_id: str
    status: str
    upload_url: str  # presigned: PUT the CSV there, with `headers`, before `expires_at`
    method: Literal["PUT"] = "PUT"
    headers: dict[str, str]
    expires_at: str
    max_bytes: int


class ImportRowError(BaseModel):
    line: int  # the file's physical line where the row starts (the header is line 1)
    column: str | None = None  # the column at fault; null for the row as a whole
    reason: str


class ImportOut(BaseModel):
    import_id: str
    status: str  # pending_upload | importing | completed | failed
    phase: str | None = None  # while importing: checking (the whole file) | writing (chunks)
    filename: str | None = None
    reason: str | None = None  # why it failed
    duplicate_of: str | None = None  # the same bytes were imported by this import: nothing written
    bytes_total: int | None = None
    bytes_done: int
    rows_total: int | None = None  # known once the check pass has read the whole file
    rows_done: int
    rows_imported: int
    rows_failed: int
    errors: list[ImportRowError] = Field(default_factory=list)  # the first 1,000
    error_report_url: str | None = None  # every row error as CSV (presigned GET), once completed
    created_at: str
    updated_at: str
    started_at: str | None = None
    finished_at: str | None = None


class ImportPage(BaseModel):
    imports: list[ImportOut]
    cursor: str | None = None
