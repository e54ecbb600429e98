from __future__ import annotations

from typing import Annotated

from api_context import current_caller, deps
from api_responses import AUTH, CREATE, documented
from aws_lambda_powertools.event_handler.api_gateway import Router
from aws_lambda_powertools.event_handler.openapi.params import Query

from core.api import senders
from core.api.schemas import SenderIn, SenderOut, SenderPage

router = Router()


@router.post("/api/senders", responses=documented(201, CREATE, 403, 429))
def create_sender(request: SenderIn) -> tuple[SenderOut, int]:
    api = deps()
    limit = api.settings.sender_creations_per_hour
    return senders.create_sender(current_caller(router), request, api.clock, api.ses, limit, api.ses_clients.sesv2), 201


@router.get("/api/senders", responses=documented(200, AUTH))
def list_senders(
    cursor: Annotated[str | None, Query(max_length=512)] = None,
    limit: Annotated[int, Query(ge=1, le=senders.MAX_SENDERS_PAGE)] = senders.MAX_SENDERS_PAGE,
) -> SenderPage:
    return senders.list_senders(current_caller(router), cursor, limit)
