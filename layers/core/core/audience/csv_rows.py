"""CSV files of contacts: the byte stream cut into records (with the byte offset and line of each,
so an import can stop and resume between any two records), the header's columns, and each row as
the `ContactIn` that `POST /api/contacts` validates.

The file is UTF-8, with or without a byte-order mark, as written by spreadsheets (RFC 4180 quoting,
CRLF or LF line ends). The header row is required and names the columns: `email` (required),
`name`, `tags` (separated by `;` or `|`), `timezone`, in any case and order; every other column is
an attribute of that name. An empty cell gives nothing: the stored field is kept. Attribute values
are text (a CSV cell has no type)."""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from core.api.schemas import MAX_ATTRIBUTES_PER_CONTACT, ContactIn

MAX_IMPORT_BYTES = 100 * 1024 * 1024  # the upload's size cap
MAX_IMPORT_ROWS = 1_000_000
MAX_ROW_BYTES = 64 * 1024  # one record, quoted line breaks included
KNOWN_COLUMNS = ("email", "name", "tags", "timezone")
MAX_COLUMNS = len(KNOWN_COLUMNS) + MAX_ATTRIBUTES_PER_CONTACT
MAX_REASON_CHARS = 300
_ATTRIBUTE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_TAG_SEPARATORS = re.compile(r"[;|]")
_BOM = "\ufeff"

# The csv module refuses fields over its limit (128 KiB by default); our own per-record limit is
# lower and checked on bytes, so lift its limit out of the way.
csv.field_size_limit(MAX_ROW_BYTES * 2)


class FileRejected(Exception):
    """The file as a whole cannot be imported (encoding, header, size, structure); says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class RowError:
    line: int  # the physical line (1-based, the header is line 1) where the record starts
    column: str | None  # the column at fault; None for the row as a whole
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"line": self.line, "column": self.column, "reason": self.reason}


@dataclass(frozen=True)
class Record:
    line: int
    cells: list[str]


class LineFeed:
    """The lines of a byte stream, decoded, with their line ends (as `csv.reader` wants them), counting
    bytes and physical lines consumed from `offset` / `line` on. After `csv.reader` yields a record it
    has consumed exactly that record's lines, so (`offset`, `line`) is then a resumable cursor."""

    def __init__(self, blocks: Iterable[bytes], offset: int = 0, line: int = 0) -> None:
        self._blocks = iter(blocks)
        self._buffer = b""
        self._eof = False
        self.offset = offset
        self.line = line
        self._record_bytes = 0

    def start_record(self) -> None:
        self._record_bytes = 0

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        raw = self._next_raw()
        self._record_bytes += len(raw)
        if self._record_bytes > MAX_ROW_BYTES:
            raise FileRejected(f"line {self.line + 1}: a row takes more than {MAX_ROW_BYTES} bytes")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise FileRejected(
                f"line {self.line + 1}: not UTF-8 (byte {self.offset + error.start} of the file); "
                "save the file as CSV UTF-8"
            ) from error
        if self.offset == 0 and text.startswith(_BOM):
            text = text[len(_BOM) :]
        self.offset += len(raw)
        self.line += 1
        return text

    def _next_raw(self) -> bytes:
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0:
                raw, self._buffer = self._buffer[: end + 1], self._buffer[end + 1 :]
                return raw
            if len(self._buffer) > MAX_ROW_BYTES:
                raise FileRejected(f"line {self.line + 1}: a row takes more than {MAX_ROW_BYTES} bytes")
            if self._eof:
                if not self._buffer:
                    raise StopIteration
                raw, self._buffer = self._buffer, b""
                return raw
            block = next(self._blocks, None)
            if block is None:
                self._eof = True
            else:
                self._buffer += block


class Records:
    """The non-empty records of a CSV stream, each with the line it starts on."""

    def __init__(self, feed: LineFeed) -> None:
        self.feed = feed
        # strict: a quote left open (which would swallow the rest of the file) is an error.
        self._reader = csv.reader(feed, strict=True)

    def next(self) -> Record | None:
        """The next record, skipping blank lines; None at the end of the file."""
        while True:
            self.feed.start_record()
            line = self.feed.line + 1
            try:
                cells = next(self._reader)
            except StopIteration:
                return None
            except csv.Error as error:
                raise FileRejected(f"line {line}: {error}") from error
            if cells and any(cell.strip() for cell in cells):
                return Record(line, cells)


def parse_header(cells: list[str]) -> list[str]:
    """The columns the header names: known ones in lower case, attributes as written."""
    if len(cells) > MAX_COLUMNS:
        raise FileRejected(f"the header has {len(cells)} columns; at most {MAX_COLUMNS}")
    columns: list[str] = []
    for position, cell in enumerate(cells, start=1):
        name = cell.strip()
        if name.lower() in KNOWN_COLUMNS:
            name = name.lower()
        elif not _ATTRIBUTE_NAME.fullmatch(name):
            raise FileRejected(
                f"header column {position} {name!r}: not a column name (email, name, tags, timezone, or an "
                "attribute: a letter or _, then letters, digits or _, at most 64)"
            )
        if name in columns:
            raise FileRejected(f"header column {position} {name!r}: named twice")
        columns.append(name)
    if "email" not in columns:
        raise FileRejected("the header row has no email column (the first row must name the columns)")
    return columns


def contact_of(columns: list[str], record: Record) -> ContactIn | list[RowError]:
    """The row as a contact, or why it is not one (each field at fault)."""
    cells = record.cells
    if len(cells) > len(columns) and any(cell.strip() for cell in cells[len(columns) :]):
        return [RowError(record.line, None, f"has {len(cells)} cells; the header names {len(columns)}")]
    data: dict[str, Any] = {}
    attributes: dict[str, str] = {}
    for column, cell in zip(columns, cells, strict=False):
        value = cell.strip()
        if not value:
            continue  # an empty cell gives nothing: the stored value is kept
        if column == "tags":
            data["tags"] = [tag.strip() for tag in _TAG_SEPARATORS.split(value) if tag.strip()]
        elif column in KNOWN_COLUMNS:
            data[column] = value
        else:
            attributes[column] = value
    if attributes:
        data["attributes"] = attributes
    if "email" not in data:
        return [RowError(record.line, "email", "required: the row has no email")]
    try:
        return ContactIn.model_validate(data)
    except ValidationError as error:
        return [RowError(record.line, _column_of(item["loc"]), _reason(item["msg"])) for item in error.errors()]


def _column_of(location: tuple[Any, ...]) -> str | None:
    parts = [part for part in location if isinstance(part, str)]
    if parts[:1] == ["attributes"] and len(parts) > 1:
        return parts[1]  # the attribute's own column
    return parts[0] if parts else None


def _reason(message: str) -> str:
    return message if len(message) <= MAX_REASON_CHARS else message[: MAX_REASON_CHARS - 1] + "…"


def combined(earlier: ContactIn, later: ContactIn) -> ContactIn:
    """Two rows of one address as one: the later row wins for every field it gives, the earlier
    one's other fields stay, as the two merged one after the other into the stored contact would."""
    given = earlier.model_fields_set | later.model_fields_set
    values = {
        field: getattr(later if field in later.model_fields_set else earlier, field) for field in ContactIn.model_fields
    }
    return ContactIn.model_construct(_fields_set=given, **values)


def error_report_lines(errors: Iterable[RowError]) -> str:
    """Row errors as CSV lines (no header)."""
    out: list[str] = []
    writer = csv.writer(_ListWriter(out), lineterminator="\r\n")
    for error in errors:
        writer.writerow([error.line, error.column or "", error.reason])
    return "".join(out)


ERROR_REPORT_HEADER = "line,column,reason\r\n"


class _ListWriter:
    def __init__(self, out: list[str]) -> None:
        self._out = out

    def write(self, text: str) -> int:
        self._out.append(text)
        return len(text)
