"""`GET /dashboard`: the operator page, served by the API function without a token, with a policy
that lets it run only its own inline script and style and talk only to its own origin. What it
shows, in a real browser against the local runner: tests/e2e/test_dashboard.py."""

from __future__ import annotations

import base64
import hashlib
import re

from tests.conftest import ApiClient


def _policy(header: str) -> dict[str, list[str]]:
    directives = (part.split() for part in header.split(";") if part.strip())
    return {name: values for name, *values in directives}


def _sha256(text: str) -> str:
    return f"'sha256-{base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()}'"


def test_the_page_is_served_without_a_token_as_uncached_html(api: ApiClient) -> None:
    # When anyone asks for the page, without a token
    reply = api.get("/dashboard", user=None)

    # Then it is the HTML page, never cached or sniffed as something else
    assert reply.status == 200
    assert reply.headers["Content-Type"] == "text/html; charset=utf-8"
    assert isinstance(reply.body, str) and reply.body.startswith("<!doctype html>")
    assert reply.headers["Cache-Control"] == "no-store"
    assert reply.headers["X-Content-Type-Options"] == "nosniff"
    assert reply.headers["Referrer-Policy"] == "no-referrer"


def test_the_policy_allows_only_the_pages_own_script_and_style_and_its_own_origin(api: ApiClient) -> None:
    reply = api.get("/dashboard", user=None)
    page, policy = reply.body, _policy(reply.headers["Content-Security-Policy"])
    scripts = re.findall(r"<script>(.*?)</script>", page, flags=re.DOTALL)
    styles = re.findall(r"<style>(.*?)</style>", page, flags=re.DOTALL)

    # Then exactly the inline script and style of the page may run, by their hashes
    assert policy["default-src"] == ["'none'"]
    assert policy["script-src"] == [_sha256(script) for script in scripts] and len(scripts) == 1
    assert policy["style-src"] == [_sha256(style) for style in styles] and len(styles) == 1
    # and the page talks only to its own origin, submits no form and is not framed
    assert policy["connect-src"] == ["'self'"]
    assert policy["form-action"] == ["'none'"]
    assert policy["frame-ancestors"] == ["'none'"]
    # nothing from elsewhere, and no inline handlers (which the hashes would not allow anyway)
    assert not re.search(r"\s(src|href)=['\"]?(https?:)?//", page)
    assert not re.search(r"<[^>]+\son[a-z]+\s*=", page)
    # the data calls: relative (so /v1/dashboard calls /v1/api/...), with the bearer token
    assert '"api/scheduler/status"' in page and '"api/scheduler/stats"' in page
    assert 'Authorization: "Bearer " + token' in page
