"""Opaque list cursors. A cursor is the urlsafe-base64 sort key of the last item of a page; the next
page starts strictly after it. Decoding checks the shape, so a forged or mangled cursor is a clear
422 naming `cursor`, never a DynamoDB error."""

from __future__ import annotations

import base64
import binascii
import re

from core.errors import InvalidInput

MAX_CURSOR_CHARS = 512


def encode_cursor(sort_key: str) -> str:
    return base64.urlsafe_b64encode(sort_key.encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None, key_pattern: str) -> str | None:
    """The sort key inside `cursor`, or None for the first page."""
    if cursor is None or cursor == "":
        return None
    reason = "not a cursor returned by this list"
    if len(cursor) > MAX_CURSOR_CHARS or not re.fullmatch(r"[A-Za-z0-9_-]+", cursor):
        raise InvalidInput("cursor", reason)
    try:
        key = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError) as error:
        raise InvalidInput("cursor", reason) from error
    if not re.fullmatch(key_pattern, key):
        raise InvalidInput("cursor", reason)
    return key
