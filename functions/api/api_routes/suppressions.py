"""The tenant's suppression list (core.api.suppressions_api; docs/suppressions.md)."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import unquote

from api_context import current_caller, deps
from api_responses import AUTH, CREATE, documented
from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.api_gateway import Router
from aws_lambda_powertools.event_handler.openapi.params import Query

from core.api import suppressions_api
from core.api.schemas import Identifier
from core.api.suppression_schemas import (
    DEFAULT_SUPPRESSIONS_PAGE,
    MAX_SUPPRESSIONS_PAGE,
    ListedReason,
    SuppressionPage,
    SuppressionRemoved,
    SuppressionsAdded,
    SuppressionsIn,
)

router = Router()

UserId = Annotated[Identifier | None, Query(description="an administrator names the user whose list it is")]
Cursor = Annotated[str | None, Query(max_length=512)]


@router.get("/api/suppressions", responses=documented(200, AUTH, 404))
def list_suppressions(
    user_id: UserId = None,
    reason: Annotated[ListedReason | None, Query()] = None,
    cursor: Cursor = None,
    limit: Annotated[int, Query(ge=1, le=MAX_SUPPRESSIONS_PAGE)] = DEFAULT_SUPPRESSIONS_PAGE,
) -> SuppressionPage:
    return suppressions_api.list_suppressions(current_caller(router), user_id, reason, cursor, limit)


@router.post("/api/suppressions", responses=documented(200, CREATE, 403, 404))
def add_suppressions(request: SuppressionsIn, user_id: UserId = None) -> SuppressionsAdded:
    return suppressions_api.add_suppressions(current_caller(router), user_id, request, deps().clock)


@router.get("/api/suppressions/export", responses=documented(200, AUTH, 404, media_type="text/csv"))
def export_suppressions(
    user_id: UserId = None, reason: Annotated[ListedReason | None, Query()] = None, cursor: Cursor = None
) -> Response[str]:
    export = suppressions_api.export_suppressions(current_caller(router), user_id, reason, cursor)
    headers = {"Content-Disposition": 'attachment; filename="suppressions.csv"'}
    if export.next_cursor:  # the list goes on: ask again with ?cursor=
        headers["X-Next-Cursor"] = export.next_cursor
    return Response(status_code=200, content_type="text/csv; charset=utf-8", body=export.text, headers=headers)


@router.delete("/api/suppressions/<email>", responses=documented(200, AUTH, 404, 409))
def delete_suppression(
    email: str,
    user_id: UserId = None,
    force: Annotated[bool, Query(description="required to remove an unsubscribed or complained entry")] = False,
) -> SuppressionRemoved:
    # The address comes URL-encoded (`@` as %40): decoded once here.
    caller = current_caller(router)
    return suppressions_api.remove_suppression(caller, user_id, unquote(email), force, deps().clock)
