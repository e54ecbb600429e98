"""What each route tells the OpenAPI document (`GET /swagger`) it answers: its success status and
body, and every error status it can give, each in the API's one error shape (`ErrorBody`).

Left alone, Powertools documents a route as 200 with its return type plus its own 422
`HTTPValidationError`. A route's `responses=` replaces the 200 (an entry without content takes the
route's return type) and overrides the 422 with the same status, so every route documents a 422 in
our shape (as `api_context` answers validation errors). Each route's decorator says, for example,
`responses=documented(201, CREATE, 403)`, and the document matches what the API really sends."""

from __future__ import annotations

from collections.abc import Iterable
from http import HTTPStatus
from typing import Any

from aws_lambda_powertools.event_handler.openapi.types import OpenAPIResponse, OpenAPIResponseContentModel

from core.api.schemas import ErrorBody

# Why each error status is answered; the body is always ErrorBody: {"error", "message", "details"}.
ERROR_REASONS: dict[int, str] = {
    400: "Malformed request, e.g. a JSON body nested too deeply.",
    401: "No caller: the bearer token's claims name no user.",
    403: "The caller may not do this, e.g. a route for administrators (group 'admins').",
    404: "An id in the path or the body names nothing the caller can see (another tenant's data included).",
    409: (
        "Conflicts with what exists: already exists, a task state that does not allow it, not enough quota, "
        "or an Idempotency-Key reused with another body or still in progress (with Retry-After)."
    ),
    415: "The body is not JSON; Content-Type must be application/json.",
    422: "Invalid input; `details` name each field and the reason.",
    429: "Too many requests; retry after the Retry-After header's seconds.",
    503: "A dependency is unavailable for now; retry (same Idempotency-Key allowed).",
}

# Error statuses shared by kinds of routes (every route also documents 422: input is validated).
AUTH = (401,)  # every /api route: the caller comes from the bearer token
BODY = (400, *AUTH, 415)  # routes with a JSON body
# Creating POSTs also honour Idempotency-Key: reused or in progress is 409, its store down is 503.
CREATE = (*BODY, 409, 503)


def documented(
    status: int = HTTPStatus.OK,
    *errors: Iterable[int] | int,
    media_type: str | None = None,
    links: dict[str, Any] | None = None,
) -> dict[int, OpenAPIResponse]:
    """The responses of one route: `status` with the route's return type (or a `media_type` body
    of text), then 422 and each error status given (alone or in groups such as CREATE), all with
    ErrorBody."""
    success: OpenAPIResponse = {"description": HTTPStatus(status).phrase}
    if media_type is not None:
        success["content"] = {media_type: {"schema": {"type": "string"}}}
    if links:
        success["links"] = links
    codes = sorted({422, *(code for group in errors for code in ((group,) if isinstance(group, int) else group))})
    responses: dict[int, OpenAPIResponse] = {int(status): success}
    for code in codes:
        error_body: OpenAPIResponseContentModel = {"model": ErrorBody}
        responses[code] = {"description": ERROR_REASONS[code], "content": {"application/json": error_body}}
    return responses


def link(method: str, path: str, **parameters: str) -> dict[str, Any]:
    """An OpenAPI link to the operation `method path`, its parameters taken from this response
    (runtime expressions such as `$response.body#/task_id`)."""
    pointer = path.replace("~", "~0").replace("/", "~1")
    return {"operationRef": f"#/paths/{pointer}/{method.lower()}", "parameters": parameters}
