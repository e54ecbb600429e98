"""The operator page, `GET /dashboard`: one static HTML file (inline CSS and vanilla JS, no build
step, nothing loaded from elsewhere). The page itself is public, as the template declares; its data
comes from `GET /api/scheduler/status` and `/api/scheduler/stats`, called by the page with the
operator's own bearer token, which it takes from the URL fragment or a form and keeps in the tab's
sessionStorage (a fragment never reaches a server).

The Content-Security-Policy allows only this page's own inline script and style, by their SHA-256
(computed here from the file, so they cannot drift), and requests to its own origin: no inline
event handlers, no `style` attributes in markup, no other origin, no forms submitted, no framing.
Hashes rather than a nonce because the page is the same bytes for everyone."""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path

from api_responses import documented
from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.api_gateway import Router

router = Router()

PAGE_FILE = Path(__file__).resolve().parents[1] / "dashboard.html"


def _inline_hashes(document: str, tag: str) -> str:
    """`'sha256-…'` of each inline <tag> element's text, as CSP hashes it (the UTF-8 bytes between
    the tags)."""
    bodies = re.findall(rf"<{tag}>(.*?)</{tag}>", document, flags=re.DOTALL)
    if not bodies:
        raise ValueError(f"{PAGE_FILE.name}: no inline <{tag}>")
    digests = (base64.b64encode(hashlib.sha256(body.encode()).digest()).decode() for body in bodies)
    return " ".join(f"'sha256-{digest}'" for digest in digests)


def content_security_policy(document: str) -> str:
    return "; ".join(
        [
            "default-src 'none'",
            f"script-src {_inline_hashes(document, 'script')}",
            f"style-src {_inline_hashes(document, 'style')}",
            "connect-src 'self'",  # the status and stats routes, nothing else
            "img-src data:",  # the empty favicon
            "base-uri 'none'",
            "form-action 'none'",  # the token form is never submitted, even without its script
            "frame-ancestors 'none'",
        ]
    )


PAGE = PAGE_FILE.read_text(encoding="utf-8")
HEADERS = {
    "Content-Security-Policy": content_security_policy(PAGE),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


@router.get("/dashboard", responses=documented(200, media_type="text/html"))
def dashboard() -> Response[str]:
    return Response(status_code=200, content_type="text/html; charset=utf-8", body=PAGE, headers=dict(HEADERS))
