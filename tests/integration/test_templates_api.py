"""Templates: checked on save (syntax, sandbox), listed, read, previewed; another user's are 404."""

from __future__ import annotations

import time
from typing import Any

import pytest

from core.api.schemas import MAX_SUBJECT_CHARS, MAX_TEMPLATE_BYTES
from core.settings import Settings
from core.storage.models import TemplateModel
from tests.conftest import ApiClient
from tests.integration.given import assert_rejected, given_contacts, given_template, given_user


@pytest.fixture(autouse=True)
def tenants(api: ApiClient) -> None:
    """Only users the administrators created may create templates."""
    given_user(api, "alice")
    given_user(api, "bob")


VALID = {"name": "welcome", "subject": "Hello {{ name }}", "html": "<p>Hi {{ name }}</p>", "text": "Hi {{ name }}"}
MARGIN = 2.0  # seconds past the render budget: generous; each slow template below takes >= 5 s
# ~2 s per urlize of a megabyte, `reps` times: one call that only a killed worker stops.
SLOW = "{% set x = 'a ' * 499999 %}{% for i in range(REPS) %}{{ x|urlize|length }}{% endfor %}"


def templates_of(user_id: str) -> list[TemplateModel]:
    return list(TemplateModel.query(user_id))


def test_user_saves_a_template(api: ApiClient) -> None:
    # When
    reply = api.post("/api/templates", VALID, user="alice")
    # Then
    assert reply.status == 201, reply.body
    assert reply.body["template_id"].startswith("tpl_")
    assert {key: reply.body[key] for key in VALID} == VALID
    (stored,) = templates_of("alice")
    assert (stored.template_id, stored.subject, stored.html, stored.text) == (
        reply.body["template_id"],
        VALID["subject"],
        VALID["html"],
        VALID["text"],
    )


@pytest.mark.parametrize(
    ("field", "source", "line"),
    [
        ("html", "<p>one</p>\n<p>two</p>\n{% if name %}<p>three</p>", 3),
        ("html", "line one\n{{ name }\n", 2),
        ("subject", "Hello {{ name", 1),
        ("text", "ok\nok\nok\n{% endfor %}", 4),
        ("html", "{{ name|no_such_filter }}", 1),
    ],
)
def test_syntax_error_names_the_field_and_line_and_nothing_is_written(
    api: ApiClient, field: str, source: str, line: int
) -> None:
    # When
    reply = api.post("/api/templates", {**VALID, field: source}, user="alice")
    # Then
    assert_rejected(reply, field)
    assert f"line {line}" in reply.body["message"]
    assert reply.body["message"].startswith(f"{field}:")
    assert templates_of("alice") == []


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ name['__class__'] }}",
        "{{ name|attr('__class__') }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ x.mro() }}",
        "{% include 'other.html' %}",
        "{% extends 'base.html' %}",
        "{% import 'macros.html' as m %}",
    ],
)
def test_template_reaching_python_internals_is_refused_at_save(api: ApiClient, source: str) -> None:
    # When
    reply = api.post("/api/templates", {**VALID, "html": source}, user="alice")
    # Then
    assert_rejected(reply, "html")
    assert templates_of("alice") == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({**VALID, "subject": "Hello\r\nBcc: victim@example.com"}, "subject"),
        ({**VALID, "subject": "Hello\nthere"}, "subject"),
        ({**VALID, "subject": "x" * (MAX_SUBJECT_CHARS + 1)}, "subject"),
        ({**VALID, "html": ""}, "html"),
        ({**VALID, "html": "x" * (MAX_TEMPLATE_BYTES + 1)}, "html"),
        ({**VALID, "text": "é" * (MAX_TEMPLATE_BYTES // 2 + 1)}, "text"),
        ({key: value for key, value in VALID.items() if key != "html"}, "html"),
        ({**VALID, "subject": ["Hello"]}, "subject"),
        ({**VALID, "name": None}, "name"),
        ({**VALID, "engine": "jinja"}, "engine"),
    ],
)
def test_bad_template_input_is_rejected_and_nothing_written(api: ApiClient, body: dict[str, Any], field: str) -> None:
    # When
    reply = api.post("/api/templates", body, user="alice")
    # Then
    assert_rejected(reply, field)
    assert templates_of("alice") == []


@pytest.mark.parametrize("field", ["subject", "html", "text"])
def test_template_slower_than_the_render_budget_is_refused_at_save_naming_the_part(
    api: ApiClient, aws: Settings, field: str
) -> None:
    # Given
    started = time.monotonic()
    # When
    reply = api.post("/api/templates", {**VALID, field: SLOW.replace("REPS", "20")}, user="alice")
    # Then
    assert time.monotonic() - started < aws.render_budget_ms / 1000 + MARGIN
    assert_rejected(reply, field)
    assert reply.body["error"] == "render_timeout"
    (detail,) = reply.body["details"]
    assert f"{aws.render_budget_ms} ms render budget" in detail["reason"]
    assert templates_of("alice") == []


def test_slow_part_behind_attributes_the_sample_lacks_is_refused_at_save(api: ApiClient) -> None:
    # When
    reply = api.post(
        "/api/templates",
        {**VALID, "subject": "{{ orders * 2 }} orders", "html": "Dear {{ first_name }}, " + SLOW.replace("REPS", "20")},
        user="alice",
    )
    # Then
    assert_rejected(reply, "html")
    assert reply.body["error"] == "render_timeout"
    assert templates_of("alice") == []


def test_template_over_the_operation_budget_is_refused_at_save(api: ApiClient) -> None:
    # When
    reply = api.post(
        "/api/templates",
        {**VALID, "text": "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"},
        user="alice",
    )
    # Then
    assert_rejected(reply, "text")
    assert reply.body["error"] == "render_error"
    assert "budget" in reply.body["message"] and "operations" in reply.body["message"]
    assert templates_of("alice") == []


def test_template_is_saved_though_the_sample_contact_lacks_its_attributes(api: ApiClient) -> None:
    # When
    reply = api.post(
        "/api/templates",
        {**VALID, "subject": "Hi {{ first_name }}", "html": "<p>{{ orders * 2 }}</p>", "text": "{{ city|upper }}"},
        user="alice",
    )
    # Then
    assert reply.status == 201, reply.body
    assert len(templates_of("alice")) == 1


def test_preview_slower_than_the_render_budget_is_422_render_timeout_in_time(api: ApiClient, aws: Settings) -> None:
    # Given a template whose cost depends on the contact: the sample at save costs nothing
    template_id = given_template(api, "alice", html=SLOW.replace("REPS", "reps|default(0)"))
    started = time.monotonic()
    # When
    reply = api.post(
        f"/api/templates/{template_id}/preview",
        {"sample": {"email": "s@example.com", "attributes": {"reps": 20}}},
        user="alice",
    )
    # Then
    assert time.monotonic() - started < aws.render_budget_ms / 1000 + MARGIN
    assert_rejected(reply, "html")
    assert reply.body["error"] == "render_timeout"
    assert f"{aws.render_budget_ms} ms render budget" in reply.body["message"]


def test_template_within_the_render_budget_saves_and_previews(api: ApiClient) -> None:
    # Given
    template_id = given_template(api, "alice", html=SLOW.replace("REPS", "reps|default(0)") + "<p>{{ name }}</p>")
    # When
    reply = api.post(
        f"/api/templates/{template_id}/preview",
        {"sample": {"email": "s@example.com", "name": "Sam", "attributes": {"reps": 0}}},
        user="alice",
    )
    # Then
    assert reply.status == 200, reply.body
    assert reply.body["html"] == "<p>Sam</p>"


def test_user_reads_own_template(api: ApiClient) -> None:
    # Given
    template_id = given_template(api, "alice", **VALID)
    # When
    reply = api.get(f"/api/templates/{template_id}", user="alice")
    # Then
    assert reply.status == 200
    assert reply.body["html"] == VALID["html"]


def test_another_users_template_is_404(api: ApiClient) -> None:
    # Given
    template_id = given_template(api, "alice")
    # When
    reply = api.get(f"/api/templates/{template_id}", user="bob")
    # Then
    assert reply.status == 404
    assert reply.body["error"] == "not_found"


def test_template_list_holds_own_summaries_without_bodies(api: ApiClient) -> None:
    # Given
    mine = given_template(api, "alice", **VALID)
    given_template(api, "bob")
    # When
    reply = api.get("/api/templates", user="alice")
    # Then
    assert reply.status == 200
    (summary,) = reply.body["templates"]
    assert summary["template_id"] == mine
    assert summary["html_chars"] == len(VALID["html"])
    assert "html" not in summary


def test_preview_for_a_contact_renders_attributes_and_escapes_html_only(api: ApiClient) -> None:
    # Given a contact whose data holds markup and an attribute named like a contact field
    (contact_id,) = given_contacts(
        api,
        "alice",
        {"email": "ann@example.com", "name": "Ann & Co", "attributes": {"city": "<Paris>", "email": "spoof"}},
    )
    template_id = given_template(
        api,
        "alice",
        subject="{{ name }} in {{ city }}",
        html="<p>{{ name }} {{ city }} {{ email }} {{ attributes.city }}</p>",
        text="{{ name }} {{ city }}",
    )
    # When
    reply = api.post(f"/api/templates/{template_id}/preview", {"contact_id": contact_id}, user="alice")
    # Then
    assert reply.status == 200, reply.body
    assert reply.body == {
        "subject": "Ann & Co in <Paris>",
        "html": "<p>Ann &amp; Co &lt;Paris&gt; ann@example.com &lt;Paris&gt;</p>",
        "text": "Ann & Co <Paris>",
    }


def test_preview_with_a_sample_contact(api: ApiClient) -> None:
    # Given
    template_id = given_template(api, "alice", subject="Hi {{ first_name }}", html="{{ email }}")
    # When
    reply = api.post(
        f"/api/templates/{template_id}/preview",
        {"sample": {"email": "sam@example.com", "attributes": {"first_name": "Sam"}}},
        user="alice",
    )
    # Then
    assert reply.status == 200, reply.body
    assert (reply.body["subject"], reply.body["html"]) == ("Hi Sam", "sam@example.com")


def test_preview_folds_line_breaks_coming_from_contact_data_out_of_the_subject(api: ApiClient) -> None:
    # Given
    template_id = given_template(api, "alice", subject="Hi {{ nick }}")
    # When
    reply = api.post(
        f"/api/templates/{template_id}/preview",
        {"sample": {"email": "sam@example.com", "attributes": {"nick": "Sam\r\nBcc: victim@example.com"}}},
        user="alice",
    )
    # Then
    assert reply.body["subject"] == "Hi Sam Bcc: victim@example.com"


def test_preview_of_an_undefined_variable_names_the_part_and_the_variable(api: ApiClient) -> None:
    # Given
    template_id = given_template(api, "alice", html="<p>ok</p>\n{{ first_name }}")
    # When
    reply = api.post(f"/api/templates/{template_id}/preview", {"sample": {"email": "s@example.com"}}, user="alice")
    # Then
    assert_rejected(reply, "html")
    assert reply.body["error"] == "render_error"
    assert "first_name" in reply.body["message"]
    assert "line 2" in reply.body["message"]


def test_computed_access_to_internals_is_stopped_by_the_sandbox_at_render(api: ApiClient) -> None:
    # Given a template that builds the attribute name at run time (not detectable on save)
    template_id = given_template(api, "alice", html="{% set a = '__cla' ~ 'ss__' %}{{ name|attr(a) }}")
    # When
    reply = api.post(f"/api/templates/{template_id}/preview", {"sample": {"email": "s@example.com"}}, user="alice")
    # Then
    assert_rejected(reply, "html")
    assert "unsafe" in reply.body["message"]


def test_preview_of_another_users_template_is_404(api: ApiClient) -> None:
    # Given
    template_id = given_template(api, "alice")
    # When
    reply = api.post(f"/api/templates/{template_id}/preview", {"sample": {"email": "s@example.com"}}, user="bob")
    # Then
    assert reply.status == 404


def test_preview_with_another_users_contact_is_404_naming_contact_id(api: ApiClient) -> None:
    # Given
    (alices_contact,) = given_contacts(api, "alice", {"email": "ann@example.com"})
    template_id = given_template(api, "bob")
    # When
    reply = api.post(f"/api/templates/{template_id}/preview", {"contact_id": alices_contact}, user="bob")
    # Then
    assert_rejected(reply, "contact_id", status=404)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "contact_id"),
        ({"contact_id": "ct_000000000000000000000000", "sample": {"email": "s@example.com"}}, "contact_id"),
        ({"sample": {"email": "nope"}}, "sample.email"),
        ({"sample": {"email": "s@example.com", "attributes": {"x": [1]}}}, "sample.attributes.x"),
        ({"contact_id": 7}, "contact_id"),
    ],
)
def test_bad_preview_input_is_rejected_naming_the_field(api: ApiClient, body: dict[str, Any], field: str) -> None:
    # Given
    template_id = given_template(api, "alice")
    # When
    reply = api.post(f"/api/templates/{template_id}/preview", body, user="alice")
    # Then
    assert_rejected(reply, field)


def test_a_caller_without_a_user_record_saves_no_template(api: ApiClient) -> None:
    reply = api.post("/api/templates", {"name": "n", "subject": "s", "html": "<p>x</p>"}, user="stranger")
    assert reply.status == 403, reply.body
    assert list(TemplateModel.query("stranger")) == []
