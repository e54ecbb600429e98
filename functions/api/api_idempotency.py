"""`Idempotency-Key` on the creating POSTs (SPEC §7), with Powertools' Idempotency utility and the
template's IdempotencyTable.

The contract:
- A creating POST that carries `Idempotency-Key` (1-255 printable ASCII characters) is run once
  per (caller, route, key) within 24 hours. Repeating it with the same body answers the first
  reply again (same status and body, plus `Idempotent-Replayed: true`) and creates nothing.
- The same key with another body is 409 `idempotency_key_reused`; while the first request is
  still running, 409 `request_in_progress` with `Retry-After`.
- Only successful (2xx) replies are remembered: after an error the key is free, so a client can
  fix the request or retry after a 503 with the same key.
- Keys are per caller: two tenants using the same key never see each other's replies.
Bodies are compared as parsed JSON (key order and spacing do not matter)."""

from __future__ import annotations

import base64
import json
import re
import zlib
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from api_context import ApiDeps, deps, error_body
from aws_lambda_powertools.utilities.idempotency import (
    DynamoDBPersistenceLayer,
    IdempotencyConfig,
    idempotent_function,
)
from aws_lambda_powertools.utilities.idempotency.exceptions import (
    BaseError,
    IdempotencyAlreadyInProgressError,
    IdempotencyValidationError,
)
from aws_lambda_powertools.utilities.idempotency.persistence.datarecord import DataRecord
from aws_lambda_powertools.utilities.idempotency.serialization.base import BaseIdempotencySerializer
from aws_lambda_powertools.utilities.typing import LambdaContext

HEADER = "Idempotency-Key"
_KEY = re.compile(r"[\x21-\x7e]{1,255}")
KEPT_SECONDS = 24 * 60 * 60
# Routes that create something; the other POSTs (cancel, start, pause, ...) are idempotent anyway.
CREATING_ROUTES = frozenset(
    {
        "/api/users",
        "/api/services",
        "/api/senders",
        "/api/contacts",
        "/api/templates",
        "/api/tasks",
        "/api/suppressions",
        # Not a creation, but a repeat after a lost reply must not re-queue (and charge) twice.
        "/api/tasks/{task_id}/retry-failed",
        # A repeat after a lost reply must not mail the address (and use quota) twice.
        "/api/templates/{template_id}/test-send",
    }
)
# Replies are stored in one DynamoDB item (400 KB); a larger one is stored compressed.
_COMPRESS_ABOVE = 64 * 1024

Reply = dict[str, Any]


class _NotRemembered(Exception):
    """A reply that must not be stored (not 2xx): Powertools deletes the record when the function
    raises, which frees the key."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.get("statusCode"))
        self.reply = reply


def _error(status: HTTPStatus, code: str, reason: str, headers: dict[str, str] | None = None) -> Reply:
    return {
        "statusCode": int(status),
        "headers": {"Content-Type": "application/json", **(headers or {})},
        "body": error_body(code, f"{HEADER}: {reason}", [{"field": HEADER, "reason": reason}]),
        "isBase64Encoded": False,
    }


def _header(event: dict[str, Any], name: str) -> str | None:
    headers = event.get("headers") or {}
    return next((str(value) for key, value in headers.items() if key.lower() == name.lower()), None)


def _parsed_body(body: str | None) -> Any:
    try:
        return json.loads(body) if body else None
    except (ValueError, RecursionError):
        return body  # compared as text; the API answers it with a 4xx, which is not stored


class _ReplySerializer(BaseIdempotencySerializer):
    """Stores a reply in the record, its body compressed when large."""

    def to_dict(self, data: Any) -> dict[str, Any]:
        reply = dict(data)
        body = str(reply.get("body") or "")
        if len(body) > _COMPRESS_ABOVE:
            reply["zbody"] = base64.b64encode(zlib.compress(body.encode(), level=6)).decode()
            reply.pop("body")
        return reply

    def from_dict(self, data: dict[str, Any]) -> Any:
        reply = dict(data)
        if "zbody" in reply:
            reply["body"] = zlib.decompress(base64.b64decode(reply.pop("zbody"))).decode()
        return reply


def _replayed(reply: Any, record: DataRecord) -> Reply:
    replayed = dict(reply)
    replayed["headers"] = {**(replayed.get("headers") or {}), "Idempotent-Replayed": "true"}
    if replayed.get("multiValueHeaders"):  # API Gateway merges both; keep Content-Type and co.
        replayed["multiValueHeaders"] = {**replayed["multiValueHeaders"], "Idempotent-Replayed": ["true"]}
    return replayed


class _Remembering:
    """The idempotent runner, bound to one ApiDeps (tests make new ones per test)."""

    def __init__(self, api: ApiDeps) -> None:
        self.api = api
        self.config = IdempotencyConfig(
            event_key_jmespath="scope",
            payload_validation_jmespath="body",
            raise_on_no_idempotency_key=True,
            expires_after_seconds=KEPT_SECONDS,
            response_hook=_replayed,
        )
        store = DynamoDBPersistenceLayer(table_name=api.settings.idempotency_table)

        @idempotent_function(
            data_keyword_argument="request",
            persistence_store=store,
            config=self.config,
            output_serializer=_ReplySerializer(),
        )
        def run(request: dict[str, Any], resolve: Callable[[], Reply], holder: list[Reply]) -> Reply:
            reply = resolve()
            holder.append(reply)
            if not 200 <= int(reply.get("statusCode", 500)) < 300:
                raise _NotRemembered(reply)
            return reply

        self.run = run


_current: _Remembering | None = None


def _remembering() -> _Remembering:
    global _current
    api = deps()
    if _current is None or _current.api is not api:
        _current = _Remembering(api)
    return _current


def resolve_once(event: dict[str, Any], context: LambdaContext, resolve: Callable[[], Reply]) -> Reply:
    """`resolve()`'s reply, run at most once per (caller, route, Idempotency-Key)."""
    key = _header(event, HEADER)
    if key is None or event.get("httpMethod") != "POST" or event.get("resource") not in CREATING_ROUTES:
        return resolve()
    if not _KEY.fullmatch(key):
        return _error(HTTPStatus.UNPROCESSABLE_ENTITY, "validation_error", "must be 1-255 printable ASCII characters")
    claims = ((event.get("requestContext") or {}).get("authorizer") or {}).get("claims") or {}
    if not claims.get("sub"):
        return resolve()  # unauthenticated: the API answers 401, nothing to remember
    request = {
        # The path too: one key on two tasks' retry-failed is two requests.
        "scope": {"user": str(claims["sub"]), "route": event["resource"], "path": event.get("path"), "key": key},
        "body": _parsed_body(event.get("body")),
    }
    remembering = _remembering()
    remembering.config.register_lambda_context(context)
    holder: list[Reply] = []
    try:
        return remembering.run(request=request, resolve=resolve, holder=holder)
    except _NotRemembered as not_remembered:
        return not_remembered.reply
    except IdempotencyValidationError:
        return _error(HTTPStatus.CONFLICT, "idempotency_key_reused", "already used with a different request body")
    except IdempotencyAlreadyInProgressError:
        reason = "a request with this key is still running; retry shortly"
        return _error(HTTPStatus.CONFLICT, "request_in_progress", reason, {"Retry-After": "1"})
    except BaseError:
        # The store failed. If the request itself ran, its reply is the truth: return it (a retry
        # within the in-progress window is then 409, after it runs again). Otherwise: retryable.
        if holder:
            return holder[0]
        reason = "the idempotency store is unavailable; retry"
        return _error(HTTPStatus.SERVICE_UNAVAILABLE, "service_unavailable", reason, {"Retry-After": "1"})
