"""Template checking and rendering, as the rest of the code sees it.

- What a template may do, and the budget of operations and sizes of each render: core.mail.sandbox.
- Where it runs, and how a render that takes longer than its wall-clock budget is stopped:
  core.mail.render_worker (a worker process, killed when late).
- Here: the contact's variables, the subject folded to one line, and the check on save: a template
  is saved only if it compiles, reaches for no Python internals, and renders a sample contact
  within the budget. What fails only because the sample lacks an attribute does not refuse it,
  since real contacts may have it; what goes over a budget does, since that is the template's own
  doing."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from core.api.schemas import MAX_SUBJECT_CHARS, is_identifier
from core.errors import InvalidInput, NotFound
from core.mail.header_rules import one_line
from core.mail.render_worker import default_workers
from core.mail.sandbox import RenderBudgetExceeded, RenderError, RenderTimeout
from core.storage.models import TemplateModel

__all__ = [
    "DEFAULT_RENDER_BUDGET",
    "RenderBudgetExceeded",
    "RenderError",
    "RenderTimeout",
    "RenderedMessage",
    "check_template",
    "load_template",
    "render_context",
    "render_many",
    "render_parts",
    "render_template",
]

DEFAULT_RENDER_BUDGET = 0.2  # seconds of wall clock for one email (settings.render_budget_ms)
SAMPLE_CONTACT: dict[str, Any] = {
    "email": "sample@example.com",
    "name": "Sample",
    "attributes": {},
    "unsubscribe_url": "https://example.invalid/unsubscribe?token=sample",  # as every send has
}


@dataclass(frozen=True)
class RenderedMessage:
    subject: str
    html: str
    text: str | None


def check_template(subject: str, html: str, text: str | None, render_budget: float = DEFAULT_RENDER_BUDGET) -> None:
    """Refuses, naming the part, a template that cannot be sent: a syntax error or a reach for
    Python internals (InvalidInput), or a render of a sample contact that goes over the render
    budget (RenderTimeout, RenderBudgetExceeded). The sample lacks every attribute: there, a
    missing variable renders empty, and a part that fails for want of one does not stop the check
    of the others (the template may well suit real contacts)."""
    try:
        default_workers.render((subject, html, text), render_context(SAMPLE_CONTACT), render_budget, sample=True)
    except RenderTimeout as error:
        raise RenderTimeout(error.field, f"for a sample contact, {_reason(error)}") from error
    except RenderBudgetExceeded as error:
        raise RenderBudgetExceeded(
            error.field, f"for a sample contact, the render goes over its budget: {_reason(error)}"
        ) from error


def _reason(error: RenderError) -> str:
    return str(error.details[0]["reason"]) if error.details else error.message


def render_context(contact: Mapping[str, Any]) -> dict[str, Any]:
    """`email`, `name`, `attributes`, and each attribute as a top-level name too. Attributes never
    shadow the contact's own fields (nor anything else the caller passes, e.g. an unsubscribe URL)."""
    attributes = _plain_attributes(contact.get("attributes"))
    context: dict[str, Any] = dict(attributes)
    context.update(contact)
    context.setdefault("name", None)
    context["attributes"] = attributes
    return context


def _plain_attributes(attributes: Any) -> dict[str, Any]:
    if attributes is None:
        return {}
    if hasattr(attributes, "as_dict"):
        return dict(attributes.as_dict())
    return dict(attributes)


def render_parts(
    subject: str,
    html: str,
    text: str | None,
    contact: Mapping[str, Any],
    render_budget: float = DEFAULT_RENDER_BUDGET,
) -> RenderedMessage:
    """All parts for one contact within `render_budget` seconds of wall clock (a small constant
    more at worst). Raises RenderTimeout when late, RenderBudgetExceeded or RenderError when the
    template fails, InvalidInput when it does not compile: each names the part."""
    return _message(default_workers.render((subject, html, text), render_context(contact), render_budget), text)


def _message(parts: list[str], text: str | None) -> RenderedMessage:
    # Contact data may hold line breaks; a header never does.
    rendered_subject = one_line(parts[0])
    if len(rendered_subject) > MAX_SUBJECT_CHARS:
        raise RenderError("subject", f"rendered subject is longer than {MAX_SUBJECT_CHARS} characters")
    return RenderedMessage(subject=rendered_subject, html=parts[1], text=parts[2] if text is not None else None)


def render_template(
    template: TemplateModel, contact: Mapping[str, Any], render_budget: float = DEFAULT_RENDER_BUDGET
) -> RenderedMessage:
    """Render a stored template for one contact: `{"email", "name", "attributes", ...}`.
    Raises RenderError (an InvalidInput: field = subject/html/text) when the template fails, and
    its RenderTimeout when it takes longer than `render_budget` seconds."""
    return render_parts(template.subject, template.html, template.text, contact, render_budget)


def render_many(
    template: TemplateModel, contacts: Sequence[Mapping[str, Any]], render_budget: float = DEFAULT_RENDER_BUDGET
) -> list[RenderedMessage | InvalidInput]:
    """`render_template` for each contact, in one round trip to the render worker (one per email
    cost the dispatcher's loop ~1 ms of wall clock each, in system calls and GIL hand-overs): each
    contact's message, or the error `render_template` would have raised for it. Each render keeps
    its own `render_budget`. The list ends early at the first render that is late (RenderTimeout)
    or stops its worker: render the contacts after it one at a time (render_template), so that a
    slow template costs each email its budget with the caller's loop in between, as before."""
    sources = (template.subject, template.html, template.text)
    results = default_workers.render_many(sources, [render_context(contact) for contact in contacts], render_budget)
    messages: list[RenderedMessage | InvalidInput] = []
    for result in results:
        try:
            messages.append(result if isinstance(result, InvalidInput) else _message(result, template.text))
        except RenderError as error:
            messages.append(error)
    return messages


def load_template(user_id: str, template_id: str, *, field: str | None = None) -> TemplateModel:
    """The user's template; another user's is NotFound like an unknown one (`field` names the
    request field in the error details, when given)."""
    if not is_identifier(template_id):
        raise NotFound("template", template_id, field=field)
    try:
        return TemplateModel.get(user_id, template_id, consistent_read=True)
    except TemplateModel.DoesNotExist as error:
        raise NotFound("template", template_id, field=field) from error
