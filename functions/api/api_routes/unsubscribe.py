"""The public one-click unsubscribe endpoint (no bearer token: the signed link is the credential).
GET shows a confirmation button (link scanners prefetch GETs; they must not unsubscribe anyone);
POST, as mail clients send for RFC 8058 one-click, unsubscribes."""

from __future__ import annotations

import html
from typing import Annotated

from api_context import deps
from api_responses import documented
from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.api_gateway import Router
from aws_lambda_powertools.event_handler.openapi.params import Query

from core.api.suppression import unsubscribe
from core.mail.unsubscribe import MAX_TOKEN_CHARS, verify_unsubscribe

router = Router()

Token = Annotated[str, Query(min_length=1, max_length=MAX_TOKEN_CHARS)]


def _page(body: str) -> Response[str]:
    document = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>Unsubscribe</title></head><body>{body}</body></html>"
    )
    return Response(status_code=200, content_type="text/html; charset=utf-8", body=document)


@router.get("/unsubscribe", responses=documented(200, media_type="text/html"))
def confirm_unsubscribe(token: Token) -> Response[str]:
    verify_unsubscribe(deps().settings.unsubscribe_signing_key, token)  # a bad link is a 422 now
    safe = html.escape(token, quote=True)
    return _page(
        "<p>Stop receiving these emails?</p>"
        f"<form method='post' action='?token={safe}'><button type='submit'>Unsubscribe</button></form>"
    )


@router.post("/unsubscribe", responses=documented(200, media_type="text/html"))
def one_click_unsubscribe(token: Token) -> Response[str]:
    api = deps()
    unsubscribe(token, api.settings.unsubscribe_signing_key, api.clock)
    return _page("<p>You are unsubscribed. You will not receive these emails again.</p>")
