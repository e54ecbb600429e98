"""API Lambda: parse, call one core function, shape the reply. Routes live in api_routes/."""

from __future__ import annotations

from typing import Any

from api_context import app, logger, with_json_body
from api_idempotency import resolve_once
from api_routes import (
    contacts,
    dashboard,
    imports,
    reputation,
    scheduler,
    senders,
    services,
    suppressions,
    tasks,
    templates,
    unsubscribe,
    users,
)
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.typing import LambdaContext

for module in (
    users,
    services,
    senders,
    contacts,
    templates,
    tasks,
    scheduler,
    unsubscribe,
    dashboard,
    suppressions,
    imports,
    reputation,
):
    app.include_router(module.router)


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_REST)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    event, unsupported = with_json_body(event)
    return unsupported or resolve_once(event, context, lambda: app.resolve(event, context))
