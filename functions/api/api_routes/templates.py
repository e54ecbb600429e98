from __future__ import annotations

from typing import Annotated

from api_context import current_caller, deps
from api_responses import AUTH, BODY, CREATE, documented, link
from aws_lambda_powertools.event_handler.api_gateway import Router
from aws_lambda_powertools.event_handler.openapi.params import Query

from core.api import templates, test_sends
from core.api.schemas import PreviewIn, RenderedOut, TemplateIn, TemplateOut, TemplatePage
from core.api.test_send_schemas import TestSendIn, TestSendOut

router = Router()

# The new template's id feeds the routes that read or preview it (OpenAPI links).
_NEW_TEMPLATE = {"template_id": "$response.body#/template_id"}
_TEMPLATE_LINKS = {
    "GetTemplate": link("GET", "/api/templates/{template_id}", **_NEW_TEMPLATE),
    "PreviewTemplate": link("POST", "/api/templates/{template_id}/preview", **_NEW_TEMPLATE),
}


def _render_budget() -> float:
    """Seconds of wall clock one render may take."""
    return deps().settings.render_budget_ms / 1000


@router.post("/api/templates", responses=documented(201, CREATE, links=_TEMPLATE_LINKS))
def create_template(request: TemplateIn) -> tuple[TemplateOut, int]:
    return templates.create_template(current_caller(router), request, deps().clock, _render_budget()), 201


@router.get("/api/templates", responses=documented(200, AUTH))
def list_templates(
    cursor: Annotated[str | None, Query(max_length=512)] = None,
    limit: Annotated[int, Query(ge=1, le=templates.MAX_TEMPLATES_PAGE)] = templates.MAX_TEMPLATES_PAGE,
) -> TemplatePage:
    return templates.list_templates(current_caller(router), cursor, limit)


@router.get("/api/templates/<template_id>", responses=documented(200, AUTH, 404))
def get_template(template_id: str) -> TemplateOut:
    return templates.get_template(current_caller(router), template_id)


@router.post("/api/templates/<template_id>/preview", responses=documented(200, BODY, 404))
def preview_template(template_id: str, request: PreviewIn) -> RenderedOut:
    return templates.preview_template(current_caller(router), template_id, request, _render_budget())


@router.post("/api/templates/<template_id>/test-send", responses=documented(200, CREATE, 403, 404, 429))
def send_test(template_id: str, request: TestSendIn) -> TestSendOut:
    api = deps()
    test_send = test_sends.TestSendDeps(
        clock=api.clock,
        ses_for_region=api.ses_send.sesv2,
        render_budget=_render_budget(),
        min_interval=api.settings.test_send_interval_seconds,
        per_hour=api.settings.test_sends_per_hour,
    )
    return test_sends.send_test_email(current_caller(router), template_id, request, test_send)
