"""The resolver, its collaborators (built once per container) and the one place where domain
errors become HTTP responses."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property, lru_cache
from http import HTTPStatus
from typing import Any

import boto3
from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response
from aws_lambda_powertools.event_handler.api_gateway import Router
from aws_lambda_powertools.event_handler.openapi.exceptions import RequestValidationError
from botocore.config import Config

from core import errors
from core.api.auth import Caller, Unauthenticated, caller_from_claims
from core.clock import Clock, SystemClock
from core.dispatch.schedules import ScheduleConfig
from core.dispatch.wakeups import WakeQueue
from core.secrets import resolve_signing_key
from core.service_health import RegionalClients
from core.settings import Settings, load_settings
from core.storage.models import bind_tables

logger = Logger()
app = APIGatewayRestResolver(enable_validation=True)
app.enable_swagger(path="/swagger", title="EDM queue scheduler API", version="1.0.0")


@dataclass
class ApiDeps:
    settings: Settings
    clock: Clock
    sqs: Any
    scheduler: Any  # EventBridge Scheduler: one dispatch schedule per email service
    ses: Any  # SES v2: sender identities
    schedules: ScheduleConfig
    wake: WakeQueue  # starts dispatchers at once (scheduler start, resume, a service enabled)
    ses_clients: RegionalClients  # SES v1 and v2 per region: a service's health check runs in its region
    # SES v2 per region for test sends, without botocore retries: a resend could deliver twice.
    ses_send: RegionalClients

    @cached_property
    def s3(self) -> Any:
        """The import uploads bucket's client (presigned upload and error-report URLs), made on the
        first import request rather than at every container's cold start."""
        retries = {"mode": "standard", "max_attempts": 3}
        return boto3.client("s3", config=Config(retries=retries, signature_version="s3v4"))


@lru_cache(maxsize=1)
def deps() -> ApiDeps:
    retries = Config(retries={"mode": "standard", "max_attempts": 3})
    no_retries = Config(retries={"mode": "standard", "max_attempts": 1})
    settings = resolve_signing_key(load_settings(), boto3.client("secretsmanager", config=retries))
    bind_tables(settings)
    sqs = boto3.client("sqs", config=retries)
    return ApiDeps(
        settings=settings,
        clock=SystemClock(),
        sqs=sqs,
        scheduler=boto3.client("scheduler", config=retries),
        ses=boto3.client("sesv2", config=retries),
        schedules=ScheduleConfig.from_settings(settings),
        wake=WakeQueue.from_settings(sqs, settings),
        ses_clients=RegionalClients(lambda api, region: boto3.client(api, region_name=region, config=retries)),
        ses_send=RegionalClients(lambda api, region: boto3.client(api, region_name=region, config=no_retries)),
    )


def current_caller(router: Router | APIGatewayRestResolver) -> Caller:
    event = router.current_event
    authorizer = event.request_context.authorizer
    claims = authorizer.claims if authorizer else None
    return caller_from_claims(claims, event.headers.get("Authorization"))


_STATUS_BY_ERROR: list[tuple[type[errors.DomainError], HTTPStatus]] = [
    (Unauthenticated, HTTPStatus.UNAUTHORIZED),
    (errors.Forbidden, HTTPStatus.FORBIDDEN),
    (errors.NotFound, HTTPStatus.NOT_FOUND),
    (errors.InvalidInput, HTTPStatus.UNPROCESSABLE_ENTITY),
    (errors.Conflict, HTTPStatus.CONFLICT),
    (errors.TooManyRequests, HTTPStatus.TOO_MANY_REQUESTS),
    (errors.ServiceUnavailable, HTTPStatus.SERVICE_UNAVAILABLE),
]


def error_body(code: str, message: str, details: list[Any]) -> str:
    """Every API error's JSON shape."""
    return json.dumps({"error": code, "message": message, "details": details})


def error_response(
    status: HTTPStatus, code: str, message: str, details: list[Any], headers: dict[str, str] | None = None
) -> Response:
    return Response(
        status_code=status,
        content_type="application/json",
        body=error_body(code, message, details),
        headers=headers,
    )


def with_json_body(event: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The event, and a 415 reply when an /api request's body is not JSON (None when it is fine).

    Checked before the resolver runs: its validation would read a form-encoded body (curl's `-d`
    default) as form fields ("Field required"), and answer other types in its own error shape.
    /unsubscribe is exempt: mail clients POST `List-Unsubscribe=One-Click` as a form (RFC 8058).
    Media types are case-insensitive but the resolver compares them as written, so a JSON one is
    passed on in lower case."""
    headers = event.get("headers") or {}
    name = next((key for key in headers if key.lower() == "content-type"), None)
    media_type = str(headers.get(name) or "").split(";", 1)[0].strip().lower() if name else ""
    if not str(event.get("path", "")).startswith("/api/") or not event.get("body") or not media_type:
        return event, None
    if media_type == "application/json":
        return {**event, "headers": {**headers, name: str(headers[name]).lower()}}, None
    reason = f"must be application/json, not {media_type}"
    body = error_body(
        "unsupported_media_type", f"Content-Type: {reason}", [{"field": "Content-Type", "reason": reason}]
    )
    reply = {
        "statusCode": HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
        "headers": {"Content-Type": "application/json"},
        "body": body,
        "isBase64Encoded": False,
    }
    return event, reply


@app.exception_handler(errors.DomainError)
def handle_domain_error(error: errors.DomainError) -> Response:
    status = next(
        (status for kind, status in _STATUS_BY_ERROR if isinstance(error, kind)),
        HTTPStatus.BAD_REQUEST,
    )
    headers = {"Retry-After": str(error.retry_after)} if isinstance(error, errors.TooManyRequests) else None
    return error_response(status, error.code, error.message, error.details, headers)


def _field_name(location: tuple[Any, ...]) -> str:
    parts = list(location)
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:]
    name = ""
    for part in parts:
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else str(part))
    return name or "body"


@app.exception_handler(RequestValidationError)
def handle_validation_error(error: RequestValidationError) -> Response:
    details = [
        {
            # A JSON syntax error's location is a character offset, not a field.
            "field": "body" if item.get("type") == "json_invalid" else _field_name(tuple(item.get("loc", ()))),
            "reason": item.get("msg", "invalid"),
        }
        for item in error.errors()
    ]
    message = "; ".join(f"{item['field']}: {item['reason']}" for item in details) or "invalid request"
    return error_response(HTTPStatus.UNPROCESSABLE_ENTITY, "validation_error", message, details)


@app.exception_handler(RecursionError)
def handle_nesting_too_deep(error: RecursionError) -> Response:
    # The JSON parser (and pydantic) give up on bodies nested thousands deep: the input's fault.
    details = [{"field": "body", "reason": "nested too deeply"}]
    return error_response(HTTPStatus.BAD_REQUEST, "invalid_request", "body: nested too deeply", details)
