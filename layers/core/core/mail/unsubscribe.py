"""Signed one-click unsubscribe tokens (RFC 8058 links carried in every campaign email).

A token is `<payload>.<signature>`, both unpadded url-safe base64:
- payload: the JSON array `[user_id, contact_id, task_id]` (compact, UTF-8);
- signature: HMAC-SHA256 over a fixed, versioned prefix plus the payload *text*, with the deployment's
  signing key. Any change to either part, or a different key, fails verification.
Tokens never expire: a recipient may click an old campaign's link at any time and it must still work.
Verification compares the signature in constant time (`hmac.compare_digest`) before it decodes
anything else, and every failure is the same `InvalidInput("token", ...)`: a forger learns nothing
about why a guess failed."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from dataclasses import dataclass
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from core.errors import InvalidInput

# Changing the format means changing this prefix: old tokens then fail instead of being misread.
_DOMAIN = b"edm-unsubscribe:v1:"
MAX_TOKEN_CHARS = 2048
_INVALID = "invalid or tampered unsubscribe token"


@dataclass(frozen=True)
class UnsubscribeClaim:
    user_id: str
    contact_id: str
    task_id: str


def _encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _decode(text: str) -> bytes:
    padded = text + "=" * (-len(text) % 4)
    return base64.b64decode(padded.encode("ascii"), altchars=b"-_", validate=True)


def _signature(key: str, payload: str) -> str:
    if not key:
        raise ValueError("the unsubscribe signing key is empty")
    digest = hmac.new(key.encode("utf-8"), _DOMAIN + payload.encode("ascii"), hashlib.sha256).digest()
    return _encode(digest)


def sign_unsubscribe(key: str, user_id: str, contact_id: str, task_id: str) -> str:
    """A tamper-proof, url-safe token naming who unsubscribes from what. Raises ValueError for an
    empty key or an empty id (a programming error, not user input)."""
    for name, value in (("user_id", user_id), ("contact_id", contact_id), ("task_id", task_id)):
        if not value:
            raise ValueError(f"{name} is empty")
    payload = _encode(json.dumps([user_id, contact_id, task_id], separators=(",", ":"), ensure_ascii=False).encode())
    return f"{payload}.{_signature(key, payload)}"


def verify_unsubscribe(key: str, token: str) -> UnsubscribeClaim:
    """The claim a token carries; InvalidInput("token", ...) when it is forged, altered or garbled."""
    if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_CHARS or not token.isascii():
        raise InvalidInput("token", _INVALID)
    payload, dot, signature = token.partition(".")
    if not dot or not payload or not signature:
        raise InvalidInput("token", _INVALID)
    expected = _signature(key, payload)
    if not hmac.compare_digest(expected.encode("ascii"), signature.encode("ascii")):
        raise InvalidInput("token", _INVALID)
    # Signed by us, so well formed unless the key leaked; checked anyway.
    try:
        values = json.loads(_decode(payload).decode("utf-8"))
    except (binascii.Error, ValueError) as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise InvalidInput("token", _INVALID) from error
    if not (isinstance(values, list) and len(values) == 3 and all(isinstance(v, str) and v for v in values)):
        raise InvalidInput("token", _INVALID)
    user_id, contact_id, task_id = values
    return UnsubscribeClaim(user_id=user_id, contact_id=contact_id, task_id=task_id)


def unsubscribe_url(base_url: str, token: str) -> str:
    """`base_url` with `token=<token>` added to its query (other query parameters kept). Raises
    ValueError unless base_url is an absolute http(s) URL."""
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"unsubscribe base URL must be an absolute http(s) URL: {base_url!r}")
    query = [(name, value) for name, value in parse_qsl(parts.query, keep_blank_values=True) if name != "token"]
    query.append(("token", token))
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query, quote_via=quote), parts.fragment))
