"""API Gateway in front of the API Lambda, in-process and without a server: a WSGI application (the
in-process transport schemathesis drives) that turns each request into the REST proxy event API
Gateway would send, routed by template.yaml's `Api` events and authorized by bearer token, and
turns the handler's reply back into HTTP."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache
from http import HTTPStatus
from typing import Any
from urllib.parse import quote

from local_runner.http_api import ApiGateway, TokenIssuer
from local_runner.template import load_template

API_FUNCTION = "ApiFunction"


@dataclass(frozen=True)
class GatewayReply:
    status: int
    headers: dict[str, str]
    body: bytes


class InProcessGateway(ApiGateway):
    """The local runner's API Gateway (routes and authorizer from the template), called in-process.

    Exceptions from the handler are not turned into a 502: they propagate, so a test shows the
    traceback."""

    def __init__(
        self, template: dict[str, Any], handler: Callable[[dict[str, Any], Any], dict[str, Any]], context: Any
    ) -> None:
        def invoke(function: str, event: dict[str, Any]) -> Any:
            assert function == API_FUNCTION, function
            return handler(event, context)

        # A fixed key: tokens are the same every run.
        super().__init__(template, invoke, TokenIssuer(key=b"reliability-suite"), integration_errors=False)

    def token(self, sub: str, groups: Iterable[str] = ()) -> str:
        return self.tokens.issue(sub, list(groups))

    def request(self, method: str, target: str, headers: dict[str, str], body: bytes) -> GatewayReply:
        """One HTTP request (`target` is the raw, percent-encoded path and query)."""
        status, multi_headers, raw = self.handle(method, target, headers, body)
        return GatewayReply(status, {name: ", ".join(values) for name, values in multi_headers.items()}, raw)

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
