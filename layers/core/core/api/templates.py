"""Templates: saved after a syntax, safety and render-budget check (core.mail.rendering), listed, read,
and previewed for one of the user's contacts or a sample contact, within the render budget."""

from __future__ import annotations

from typing import Any

from core.api.auth import Caller
from core.api.ownership import load_contacts, require_tenant
from core.api.paging import decode_cursor, encode_cursor
from core.api.schemas import (
    MAX_TEMPLATE_BYTES,
    PreviewIn,
    RenderedOut,
    TemplateIn,
    TemplateOut,
    TemplatePage,
    TemplateSummary,
)
from core.clock import Clock, iso
from core.errors import InvalidInput, NotFound
from core.mail.rendering import DEFAULT_RENDER_BUDGET, check_template, load_template, render_template
from core.storage.ids import new_id
from core.storage.models import TemplateModel

TEMPLATE_ID_PATTERN = r"tpl_[0-9a-f]{24}"
MAX_TEMPLATES_PAGE = 1000


PREVIEW_UNSUBSCRIBE_URL = "https://example.invalid/unsubscribe?token=preview"


def create_template(
    caller: Caller, request: TemplateIn, clock: Clock, render_budget: float = DEFAULT_RENDER_BUDGET
) -> TemplateOut:
    """`render_budget`: seconds of wall clock a sample contact's render may take (as at send)."""
    require_tenant(caller)
    _check_item_size(request)
    check_template(request.subject, request.html, request.text, render_budget)
    template = TemplateModel(
        caller.user_id,
        new_id("tpl"),
        name=request.name,
        subject=request.subject,
        html=request.html,
        text=request.text,
        created_at=clock.now(),
    )
    template.save(condition=TemplateModel.template_id.does_not_exist())
    return template_out(template)


def _check_item_size(request: TemplateIn) -> None:
    sizes = {field: len((getattr(request, field) or "").encode()) for field in ("name", "subject", "html", "text")}
    total = sum(sizes.values())
    if total > MAX_TEMPLATE_BYTES:
        field = "text" if sizes["text"] > sizes["html"] else "html"
        reason = f"template is {total} bytes (UTF-8); subject, html and text together: at most {MAX_TEMPLATE_BYTES}"
        raise InvalidInput(field, reason)


def list_templates(caller: Caller, cursor: str | None = None, limit: int = MAX_TEMPLATES_PAGE) -> TemplatePage:
    after = decode_cursor(cursor, TEMPLATE_ID_PATTERN)
    condition = TemplateModel.template_id > after if after else None
    templates = list(TemplateModel.query(caller.user_id, range_key_condition=condition, limit=limit + 1))
    more = len(templates) > limit
    templates = templates[:limit]
    return TemplatePage(
        templates=[
            TemplateSummary(
                template_id=template.template_id,
                name=template.name,
                subject=template.subject,
                html_chars=len(template.html),
                text_chars=len(template.text) if template.text is not None else None,
                created_at=iso(template.created_at),
            )
            for template in templates
        ],
        cursor=encode_cursor(templates[-1].template_id) if more else None,
    )


def get_template(caller: Caller, template_id: str) -> TemplateOut:
    return template_out(load_template(caller.user_id, template_id))


def preview_template(
    caller: Caller, template_id: str, request: PreviewIn, render_budget: float = DEFAULT_RENDER_BUDGET
) -> RenderedOut:
    """Answers within `render_budget` seconds of rendering: RenderTimeout (422) when it is late."""
    template = load_template(caller.user_id, template_id)
    if (request.contact_id is None) == (request.sample is None):
        raise InvalidInput("contact_id", "give either contact_id (one of your contacts) or sample")
    contact: dict[str, Any]
    if request.contact_id is not None:
        found = load_contacts(caller.user_id, [request.contact_id]).get(request.contact_id)
        if found is None:
            raise NotFound("contact", request.contact_id, field="contact_id")
        contact = {"email": found.email, "name": found.name, "attributes": found.attributes}
    else:
        assert request.sample is not None
        contact = {
            "email": str(request.sample.email),
            "name": request.sample.name,
            "attributes": dict(request.sample.attributes),
        }
    # The dispatcher passes each recipient's signed one-click link; preview shows where it goes.
    contact.setdefault("unsubscribe_url", PREVIEW_UNSUBSCRIBE_URL)
    rendered = render_template(template, contact, render_budget)
    return RenderedOut(subject=rendered.subject, html=rendered.html, text=rendered.text)


def template_out(template: TemplateModel) -> TemplateOut:
    return TemplateOut(
        template_id=template.template_id,
        name=template.name,
        subject=template.subject,
        html=template.html,
        text=template.text,
        created_at=iso(template.created_at),
    )
