"""Rendering in the sandbox: contact data in, message out; nothing a template does can reach Python
internals or exhaust the process that renders for every user of a service."""

from __future__ import annotations

import pytest

from core.errors import InvalidInput
from core.models import TemplateModel
from core.rendering import RenderError, check_template, render_parts, render_template

ANN = {"email": "ann@example.com", "name": "Ann", "attributes": {"first_name": "Ann", "orders": 3}}


def test_render_template_renders_all_three_parts_from_a_stored_template() -> None:
    # Given
    template = TemplateModel(
        "alice", "tpl_1", name="t", subject="Hi {{ first_name }}", html="<b>{{ orders * 2 }}</b>", text="{{ email }}"
    )
    # When
    message = render_template(template, ANN)
    # Then
    assert (message.subject, message.html, message.text) == ("Hi Ann", "<b>6</b>", "ann@example.com")


def test_attributes_do_not_shadow_contact_fields_or_extra_values() -> None:
    # Given
    contact = {**ANN, "attributes": {"email": "spoof", "name": "spoof", "unsubscribe_url": "spoof"}}
    # When
    message = render_parts(
        "s", "{{ email }} {{ name }} {{ unsubscribe_url }}", None, {**contact, "unsubscribe_url": "u"}
    )
    # Then
    assert message.html == "ann@example.com Ann u"


def test_missing_name_renders_empty_not_none() -> None:
    # When
    message = render_parts("Hi {{ name }}", "[{{ name }}]", None, {"email": "a@example.com", "attributes": {}})
    # Then
    assert (message.subject, message.html) == ("Hi", "[]")


def test_optional_attributes_use_default() -> None:
    # When
    message = render_parts("s", "Hi {{ first_name | default('there') }}", None, {"email": "a@example.com"})
    # Then
    assert message.html == "Hi there"


@pytest.mark.parametrize(
    "html",
    [
        "{{ 'x' * 10**9 }}",
        "{{ 'x'|center(999999999) }}",
        "{{ 'x'.ljust(999999999) }}",
        "{{ '%0999999999d'|format(1) }}",
        "{{ '%0999999999d' % 1 }}",
        "{{ '{:>999999999}'.format(1) }}",
        "{{ 2 ** 100000 }}",
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        "{% set a = 'x'|center(100000) %}{% set a = a ~ a %}{% set a = a ~ a %}{% set a = a ~ a %}"
        "{% set a = a ~ a %}{% set a = a ~ a %}{{ a }}",
        "{% set a = 'x'|center(100000) %}{{ a|replace(' ', a) }}",
        "{% set a = 'x'|center(100000) %}{{ a.replace(' ', a) }}",
        "{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}",
        "{% for i in range(50) %}{{ 'y' * 999999 }}{% endfor %}",
        "{{ [].append(1) }}",
        "{{ lipsum(100000) }}",
    ],
)
def test_resource_hungry_or_mutating_templates_fail_with_a_render_error(html: str) -> None:
    # Given a template that passes the save-time check
    check_template("s", html, None)
    # When / Then
    with pytest.raises(RenderError) as raised:
        render_parts("s", html, None, ANN)
    assert raised.value.field == "html"


def test_syntax_error_reports_field_and_line() -> None:
    # When / Then
    with pytest.raises(InvalidInput) as raised:
        check_template("ok", "ok", "one\ntwo\n{{ broken")
    assert raised.value.field == "text"
    assert "line 3" in raised.value.message
