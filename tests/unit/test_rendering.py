"""Rendering in the sandbox: contact data in, message out; nothing a template does can reach Python
internals, exhaust the process that renders for every user of a service, or hold it past the
render budget.

Timing tests use templates whose cost is fixed and far beyond the budget (each would take 5 s or
more), and assert the call returned within the budget plus a generous margin."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import pytest

from core.errors import InvalidInput
from core.mail.render_worker import COMPILE_SECONDS, RenderWorkers, Worker
from core.mail.rendering import (
    RenderBudgetExceeded,
    RenderError,
    RenderTimeout,
    check_template,
    render_many,
    render_parts,
    render_template,
)
from core.storage.models import TemplateModel

ANN = {"email": "ann@example.com", "name": "Ann", "attributes": {"first_name": "Ann", "orders": 3}}
BUDGET = 0.2
MARGIN = 2.0  # seconds: generous, for a loaded machine; every slow template below takes >= 5 s
# One filter call of ~2 s (urlize on a megabyte), twenty times: nothing between operations can
# stop the call in progress; only killing the worker does.
ONE_SLOW_CALL = "{% set x = 'a ' * 499999 %}{% for i in range(20) %}{{ x|urlize|length }}{% endfor %}"
# Forty thousand calls of ~1 ms each (upper on a megabyte): the deadline check between operations
# stops it.
MANY_SLOW_OPERATIONS = "{% set x = 'a ' * 499999 %}{% for i in range(40000) %}{{ x|upper|length }}{% endfor %}"


@pytest.fixture
def workers() -> Iterator[RenderWorkers]:
    """Workers of the test's own, to watch their process ids."""
    pool = RenderWorkers()
    yield pool
    pool.close()


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
    ],
)
def test_resource_hungry_templates_fail_to_render_and_are_refused_at_save(html: str) -> None:
    # When / Then
    with pytest.raises(RenderBudgetExceeded) as rendered:
        render_parts("s", html, None, ANN)
    with pytest.raises(RenderBudgetExceeded) as saved:
        check_template("s", html, None)
    assert (rendered.value.field, saved.value.field) == ("html", "html")
    assert "budget" in saved.value.message


@pytest.mark.parametrize("html", ["{{ [].append(1) }}", "{{ lipsum(100000) }}", "{{ ''|attr('__cla' ~ 'ss__') }}"])
def test_mutating_or_unsafe_templates_fail_to_render(html: str) -> None:
    # Given a template that is not over any budget (so it may be saved)
    check_template("s", html, None)
    # When / Then
    with pytest.raises(RenderError) as raised:
        render_parts("s", html, None, ANN)
    assert raised.value.field == "html"
    assert not isinstance(raised.value, RenderBudgetExceeded)


def test_a_template_that_only_lacks_the_samples_attributes_is_saved() -> None:
    # When / Then: no error, though the sample contact has no `first_name` nor `orders`
    check_template("Hi {{ first_name }}", "{{ orders * 2 }} {{ unsubscribe_url }}", "{{ city|upper }}")


@pytest.mark.parametrize(
    ("subject", "html"),
    [
        ("Hi {{ first_name }}", "Dear {{ first_name|title }}, " + ONE_SLOW_CALL),  # missing: empty
        ("{{ orders * 2 }} orders", ONE_SLOW_CALL),  # the subject fails: the html is checked still
        ("Hi", "{% if not vip %}" + ONE_SLOW_CALL + "{% endif %}"),
    ],
)
def test_the_check_on_save_reaches_past_what_the_sample_lacks(subject: str, html: str) -> None:
    # When / Then
    with pytest.raises(RenderTimeout) as raised:
        check_template(subject, html, None, BUDGET)
    assert raised.value.field == "html"


def test_one_slow_filter_call_is_stopped_at_the_budget() -> None:
    # Given
    started = time.monotonic()
    # When
    with pytest.raises(RenderTimeout) as raised:
        render_parts("s", ONE_SLOW_CALL, None, ANN, BUDGET)
    # Then
    assert time.monotonic() - started < BUDGET + MARGIN
    assert raised.value.field == "html"
    assert raised.value.code == "render_timeout"
    assert "200 ms render budget" in raised.value.message


def test_many_slow_operations_stop_at_the_budget_and_keep_the_worker(workers: RenderWorkers) -> None:
    # Given a worker that has rendered once
    workers.render(("s", "ok", None), {}, BUDGET)
    (worker_before,) = workers.pids()
    started = time.monotonic()
    # When
    with pytest.raises(RenderTimeout):
        workers.render(("s", MANY_SLOW_OPERATIONS, None), {}, BUDGET)
    # Then it stopped itself in time: no kill, no restart
    assert time.monotonic() - started < BUDGET + MARGIN
    assert workers.pids() == [worker_before]


@pytest.mark.parametrize(
    ("field", "parts"), [("subject", (ONE_SLOW_CALL, "ok", None)), ("text", ("s", "ok", ONE_SLOW_CALL))]
)
def test_a_killed_render_names_the_part_it_was_on(field: str, parts: tuple[str, str, str | None]) -> None:
    # When
    with pytest.raises(RenderTimeout) as raised:
        render_parts(*parts, ANN, BUDGET)
    # Then
    assert raised.value.field == field


def test_after_a_killed_render_the_next_one_renders_on_a_new_worker(workers: RenderWorkers) -> None:
    # Given
    workers.render(("s", "ok", None), {}, BUDGET)
    (killed,) = workers.pids()
    with pytest.raises(RenderTimeout):
        workers.render(("s", ONE_SLOW_CALL, None), {}, BUDGET)
    # When
    parts = workers.render(("Hi {{ name }}", "<b>{{ name }}</b>", None), {"name": "Ann & Co"}, BUDGET)
    # Then
    assert parts == ["Hi Ann & Co", "<b>Ann &amp; Co</b>"]
    assert killed not in workers.pids()


def test_a_template_that_compiles_too_slowly_is_refused_at_save_in_time() -> None:
    # Given ~500 KB of expressions: ~5 s of Jinja2 compilation
    html = "{{ name }} " * 46_000
    started = time.monotonic()
    # When
    with pytest.raises(RenderTimeout) as raised:
        check_template("s", html, None)
    # Then
    assert time.monotonic() - started < COMPILE_SECONDS + MARGIN
    assert raised.value.field == "html"
    assert "compiling takes longer" in raised.value.message


def test_a_render_that_needs_gigabytes_fails_in_the_worker_not_the_caller() -> None:
    # Given a list of 300 one-megabyte strings: 300 MB, beyond the worker's address space limit
    items = ", ".join(f"a ~ '{i % 10}'" for i in range(300))
    html = "{% set a = 'x' * 999999 %}{% set many = [" + items + "] %}{{ many|length }}"
    # When / Then (a budget long enough that memory, not time, is what runs out)
    with pytest.raises(RenderBudgetExceeded) as raised:
        render_parts("s", html, None, ANN, render_budget=5.0)
    assert "memory" in raised.value.message
    assert render_parts("s", "ok", None, ANN).html == "ok"


def test_text_crosses_the_process_boundary_unchanged() -> None:
    # Given contact data with non-ASCII text, an emoji and a lone surrogate (JSON allows one)
    name = "Zoë 👋 \ud800 \x00 end"
    # When
    message = render_parts("{{ name }}", "{{ name }}", "{{ name }}", {**ANN, "name": name})
    # Then
    assert message.text == name
    assert message.html == "Zoë 👋 \ud800 \x00 end"
    assert message.subject == "Zoë 👋 \ud800 end"  # a header holds no control character


def test_a_worker_exits_when_its_parent_closes_its_end() -> None:
    # Given a worker that has rendered
    worker = Worker()
    try:
        assert worker.render(("s", "ok", None), {}, BUDGET) == ["s", "ok"]
        # When the parent's end closes (as it does when the parent exits, however it exits)
        assert worker.process.stdin is not None
        worker.process.stdin.close()
        # Then
        assert worker.process.wait(timeout=MARGIN) == 0
    finally:
        worker.close()


def test_syntax_error_reports_field_and_line() -> None:
    # When / Then
    with pytest.raises(InvalidInput) as raised:
        check_template("ok", "ok", "one\ntwo\n{{ broken")
    assert raised.value.field == "text"
    assert "line 3" in raised.value.message


# ---------------------------------------------------------------- a batch in one round trip


def test_render_many_gives_each_contact_what_render_template_gives_it() -> None:
    # Given contacts of which one lacks an attribute the template needs and one makes the subject too long
    template = TemplateModel(
        "alice", "tpl_1", name="t", subject="Hi {{ name }}", html="<b>{{ orders * 2 }}</b>", text="{{ email }}"
    )
    contacts = [
        ANN,
        {"email": "bob@example.com", "name": "Bob", "attributes": {}},
        {**ANN, "name": "x" * 2000},
        {**ANN, "name": "Zoë 👋 \ud800 \x00 end", "attributes": {"orders": 1}},
    ]
    # When
    results = render_many(template, contacts, BUDGET)
    # Then every result is the message, or the error, of rendering that contact alone
    assert len(results) == len(contacts)
    for contact, result in zip(contacts, results, strict=True):
        try:
            expected: object = render_template(template, contact, BUDGET)
        except InvalidInput as error:
            assert isinstance(result, type(error))
            assert (result.field, result.message) == (error.field, error.message)
        else:
            assert result == expected
    assert isinstance(results[1], RenderError)
    assert isinstance(results[2], RenderError) and results[2].field == "subject"


def test_render_many_refuses_every_contact_of_a_template_that_does_not_compile() -> None:
    # Given
    template = TemplateModel("alice", "tpl_2", name="t", subject="s", html="{{ broken", text=None)
    # When
    results = render_many(template, [ANN, ANN], BUDGET)
    # Then
    assert len(results) == 2
    assert all(isinstance(result, InvalidInput) and result.field == "html" for result in results)


@pytest.mark.parametrize("html", [ONE_SLOW_CALL, MANY_SLOW_OPERATIONS])
def test_render_many_stops_at_the_first_late_render(workers: RenderWorkers, html: str) -> None:
    # Given a template that is slow for the second contact only
    template = f"{{% if slow %}}{html}{{% endif %}}ok"
    contexts = [{"slow": False}, {"slow": True}, {"slow": False}, {"slow": True}]
    workers.render(("s", "ok", None), {}, BUDGET)
    (before,) = workers.pids()
    started = time.monotonic()
    # When
    results = workers.render_many(("s", template, None), contexts, BUDGET)
    # Then the first renders, the second is late within its budget, and the rest is left to the
    # caller (one at a time): the late worker was killed, its replacement renders them
    assert time.monotonic() - started < BUDGET + MARGIN
    assert results[0] == ["s", "ok"]
    assert isinstance(results[1], RenderTimeout) and results[1].field == "html"
    assert len(results) == 2
    assert before not in workers.pids()
    assert workers.render(("s", template, None), contexts[2], BUDGET) == ["s", "ok"]


def test_an_idle_worker_that_died_is_replaced_by_the_next_render(workers: RenderWorkers) -> None:
    # Given an idle worker that died
    workers.render(("s", "ok", None), {}, BUDGET)
    (dead,) = workers.pids()
    os.kill(dead, signal.SIGKILL)
    time.sleep(0.1)
    # When
    parts = workers.render(("Hi {{ name }}", "ok", None), {"name": "Ann"}, BUDGET)
    # Then
    assert parts == ["Hi Ann", "ok"]
    assert dead not in workers.pids()


def test_render_many_of_no_contacts_asks_nothing(workers: RenderWorkers) -> None:
    # When
    assert workers.render_many(("s", "ok", None), [], BUDGET) == []
    # Then the worker's next reply is the next request's
    assert workers.render(("s", "ok", None), {}, BUDGET) == ["s", "ok"]
