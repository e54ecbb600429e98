"""API Gateway in front of the API Lambda, in-process and without a server: a WSGI application (the
in-process transport schemathesis drives) that turns each request into the REST proxy event API
Gateway would send, routed by template.yaml's `Api` events and authorized by bearer token, and
turns the handler's reply back into HTTP."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache
from http import HTTPStatus
from typing import Any
from urllib.parse import quote, urlsplit

from local_runner.apigw import rest_event
from local_runner.http_api import TokenIssuer, routes_from_template
from local_runner.template import load_template

API_FUNCTION = "ApiFunction"


@dataclass(frozen=True)
class GatewayReply:
    status: int
    headers: dict[str, str]
    body: bytes


class InProcessGateway:
    """The template's routes to the API function, called in-process with REST proxy events.

    A route outside the template is 403 and a route that needs a token answers 401 without one, as
    API Gateway does before the function runs. Exceptions from the handler are not turned into a
    502: they propagate, so a test shows the traceback."""

    def __init__(
        self, template: dict[str, Any], handler: Callable[[dict[str, Any], Any], dict[str, Any]], context: Any
    ) -> None:
        self.routes = [route for route in routes_from_template(template) if route.function == API_FUNCTION]
        self.tokens = TokenIssuer(key=b"reliability-suite")  # a fixed key: tokens are the same every run
        self._handler = handler
        self._context = context

    def token(self, sub: str, groups: Iterable[str] = ()) -> str:
        return self.tokens.issue(sub, list(groups))

    def request(self, method: str, target: str, headers: dict[str, str], body: bytes) -> GatewayReply:
        """One HTTP request (`target` is the raw, percent-encoded path and query)."""
        url = urlsplit(target)
        path = url.path or "/"
        for route in self.routes:
            parameters = route.match(method, path)
            if parameters is None:
                continue
            claims = None
            if route.needs_token:
                authorization = next(
                    (value for name, value in headers.items() if name.lower() == "authorization"), None
                )
                claims = self.tokens.claims(authorization)
                if claims is None:
                    return GatewayReply(HTTPStatus.UNAUTHORIZED, _JSON, b'{"message": "Unauthorized"}')
            event = rest_event(
                method,
                path,
                resource=route.resource,
                path_parameters=parameters or None,
                query=url.query,
                body=body.decode("utf-8", errors="replace") if body else None,
                claims=claims,
                headers=headers,
            )
            return _reply(self._handler(event, self._context))
        return GatewayReply(HTTPStatus.FORBIDDEN, _JSON, b'{"message": "Missing Authentication Token"}')

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        """WSGI: the request as a client sent it (raw path, headers as named), the reply as sent."""
        target = environ.get("RAW_URI") or quote(environ.get("PATH_INFO", "/"))
        if "?" not in target and environ.get("QUERY_STRING"):
            target += "?" + environ["QUERY_STRING"]
        headers = {
            name[5:].replace("_", "-").title(): str(value)
            for name, value in environ.items()
            if name.startswith("HTTP_")
        }
        for name in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            if environ.get(name):
                headers[name.replace("_", "-").title()] = str(environ[name])
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        reply = self.request(environ["REQUEST_METHOD"], target, headers, body)
        start_response(f"{reply.status} {HTTPStatus(reply.status).phrase}", list(reply.headers.items()))
        return [reply.body]


_JSON = {"Content-Type": "application/json"}


def _reply(result: dict[str, Any]) -> GatewayReply:
    headers = {name: str(value) for name, value in (result.get("headers") or {}).items()}
    for name, values in (result.get("multiValueHeaders") or {}).items():
        headers[name] = ", ".join(str(value) for value in values)
    text = result.get("body") or ""
    body = base64.b64decode(text) if result.get("isBase64Encoded") else str(text).encode()
    return GatewayReply(int(result["statusCode"]), headers, body)


class LambdaContext:
    function_name = API_FUNCTION
    memory_limit_in_mb = 512
    invoked_function_arn = f"arn:aws:lambda:us-east-1:123456789012:function:{API_FUNCTION}"
    aws_request_id = "reliability"

    @staticmethod
    def get_remaining_time_in_millis() -> int:
        return 30_000


@lru_cache(maxsize=1)
def template() -> dict[str, Any]:
    """template.yaml, read once (parsing it takes longer than a world's worth of API calls)."""
    return load_template()


@lru_cache(maxsize=1)
def api_gateway() -> InProcessGateway:
    """The gateway in front of this repository's API handler."""
    import api_handler

    return InProcessGateway(template(), api_handler.lambda_handler, LambdaContext())
