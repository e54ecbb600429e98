"""API Gateway, locally: an HTTP server whose requests become REST (v1) proxy events for the function
that the template routes them to, and whose replies are the handler's response.

As in AWS: routes and authorisation come from the template's `Api` events (a route without
`Auth: {Authorizer: NONE}` needs a bearer token; none or a bad one is 401 `Unauthorized`); a path
or method the template does not route is 403 `Missing Authentication Token`; the authorizer's
claims reach the handler in `requestContext.authorizer.claims`. Cognito's part is played by
`POST /local/token {"sub": "...", "groups": [...]}` -> `{"token": "..."}` (SPEC §7): a token signed
with a key made at start-up, so tokens last as long as the runner."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import re
import secrets
import threading
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

from local_runner.apigw import claims_for, rest_event
from local_runner.functions import Invoke
from local_runner.template import function_events

log = logging.getLogger("local_runner")

TOKEN_PATH = "/local/token"  # noqa: S105 - a route, not a secret
MAX_BODY_BYTES = 10 * 1024 * 1024  # API Gateway's payload limit
_PARAMETER = re.compile(r"\{([A-Za-z0-9_]+)(\+?)\}")


@dataclass(frozen=True)
class Route:
    method: str  # GET, POST, ... or ANY
    resource: str  # the template's path, e.g. /api/tasks/{task_id}
    function: str  # logical id of the function it invokes
    needs_token: bool
    pattern: re.Pattern[str]

    def match(self, method: str, path: str) -> dict[str, str] | None:
        if self.method not in ("ANY", method):
            return None
        found = self.pattern.fullmatch(path)
        return None if found is None else {name: unquote(value) for name, value in found.groupdict().items()}


def _route_pattern(resource: str) -> re.Pattern[str]:
    parts, position = [], 0
    for parameter in _PARAMETER.finditer(resource):
        parts.append(re.escape(resource[position : parameter.start()]))
        greedy = parameter.group(2) == "+"
        parts.append(f"(?P<{parameter.group(1)}>{'.+' if greedy else '[^/]+'})")
        position = parameter.end()
    parts.append(re.escape(resource[position:]))
    return re.compile("".join(parts))


def routes_from_template(template: dict[str, Any]) -> list[Route]:
    """Every `Api` event of every function, most specific first (fewer path parameters win, as in
    API Gateway, so /api/tasks/export would beat /api/tasks/{task_id})."""
    routes = [
        Route(
            method=props["Method"].upper(),
            resource=props["Path"],
            function=logical_id,
            needs_token=props.get("Auth", {}).get("Authorizer") != "NONE",
            pattern=_route_pattern(props["Path"]),
        )
        for logical_id, props in function_events(template, "Api")
    ]
    return sorted(routes, key=lambda route: (route.resource.count("{"), route.method == "ANY"))


class TokenIssuer:
    """Signs ID tokens and checks them: the local stand-in for Cognito. A token is a JWT (HS256
    with a key per run) whose payload is shaped like a Cognito ID token, `cognito:groups` a JSON
    list; the claims handed to the function are what API Gateway's authorizer makes of it."""

    def __init__(self, key: bytes | None = None) -> None:
        self._key = key or secrets.token_bytes(32)

    def issue(self, sub: str, groups: list[str]) -> str:
        header = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "local"}).encode())
        claims: dict[str, Any] = {"sub": sub, "token_use": "id"}
        if groups:
            claims["cognito:groups"] = groups
        signed = f"{header}.{_b64(json.dumps(claims).encode())}"
        return f"{signed}.{self._signature(signed)}"

    def claims(self, authorization: str | None) -> dict[str, str] | None:
        """The authorizer's claims for a valid `Bearer <token>` header; None when missing,
        malformed or forged."""
        scheme, _, token = (authorization or "").partition(" ")
        header, _, rest = token.strip().partition(".")
        payload, _, signature = rest.partition(".")
        if scheme.lower() != "bearer" or not header or not payload:
            return None
        # Bytes: compare_digest refuses non-ASCII str, and a header can carry anything.
        expected = self._signature(f"{header}.{payload}").encode()
        if not hmac.compare_digest(signature.encode("utf-8", "surrogateescape"), expected):
            return None
        try:
            claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        except (binascii.Error, ValueError):
            return None
        if not isinstance(claims, dict) or not isinstance(claims.get("sub"), str):
            return None
        groups = claims.get("cognito:groups")
        return claims_for(claims["sub"], [str(group) for group in groups] if isinstance(groups, list) else None)

    def _signature(self, signed: str) -> str:
        return _b64(hmac.new(self._key, signed.encode("utf-8", "surrogateescape"), hashlib.sha256).digest())


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _token_request(body: bytes) -> tuple[str, list[str]] | dict[str, Any]:
    """(sub, groups) from a /local/token body, or the 400 error body naming the field."""

    def invalid(field: str, reason: str) -> dict[str, Any]:
        return {
            "error": "validation_error",
            "message": f"{field}: {reason}",
            "details": [{"field": field, "reason": reason}],
        }

    try:
        request = json.loads(body or b"{}")
    except ValueError:
        return invalid("body", "is not valid JSON")
    if not isinstance(request, dict):
        return invalid("body", "must be a JSON object")
    sub, groups = request.get("sub"), request.get("groups", [])
    if not isinstance(sub, str) or not sub.strip() or len(sub) > 128:
        return invalid("sub", "must be a non-empty string of at most 128 characters")
    if not isinstance(groups, list) or not all(isinstance(group, str) and group for group in groups):
        return invalid("groups", "must be a list of group names")
    unknown = set(request) - {"sub", "groups"}
    if unknown:
        return invalid(sorted(unknown)[0], "is not a known field (sub, groups)")
    return sub, groups


class ApiGateway:
    """API Gateway without a transport: routing and the authorizer from the template, REST proxy
    events in, the function's reply out as HTTP (status, headers, body). The local server below and
    the reliability suite's in-process client both use it. `integration_errors`: a function that
    raises is API Gateway's 502, as in AWS (False: the exception propagates, for tests)."""

    def __init__(
        self,
        template: dict[str, Any],
        invoke: Invoke,
        tokens: TokenIssuer | None = None,
        *,
        integration_errors: bool = True,
    ) -> None:
        self.routes = routes_from_template(template)
        self.tokens = tokens or TokenIssuer()
        self._invoke = invoke
        self._integration_errors = integration_errors

    def handle(
        self, method: str, target: str, headers: dict[str, str], body: bytes, source_ip: str = "127.0.0.1"
    ) -> tuple[int, dict[str, list[str]], bytes]:
        """One HTTP request -> (status, headers, body), as API Gateway would answer it."""
        url = urlsplit(target)
        path = url.path or "/"
        if path == TOKEN_PATH and method == "POST":
            parsed = _token_request(body)
            if isinstance(parsed, dict):
                return _json_reply(HTTPStatus.BAD_REQUEST, parsed)
            return _json_reply(HTTPStatus.OK, {"token": self.tokens.issue(*parsed)})
        for route in self.routes:
            parameters = route.match(method, path)
            if parameters is None:
                continue
            claims = None
            if route.needs_token:
                claims = self.tokens.claims(_header(headers, "Authorization"))
                if claims is None:
                    return _json_reply(HTTPStatus.UNAUTHORIZED, {"message": "Unauthorized"})
            event = rest_event(
                method,
                path,
                resource=route.resource,
                path_parameters=parameters or None,
                query=url.query,
                body=_event_body(body),
                claims=claims,
                headers=headers,
                source_ip=source_ip,
            )
            try:
                return _lambda_reply(self._invoke(route.function, event))
            except Exception:  # logged by the function host; API Gateway answers a failed integration so
                if not self._integration_errors:
                    raise
                return _json_reply(HTTPStatus.BAD_GATEWAY, {"message": "Internal server error"})
        return _json_reply(HTTPStatus.FORBIDDEN, {"message": "Missing Authentication Token"})


class LocalApiGateway(ApiGateway):
    """A threaded HTTP server in front of the template's API functions."""

    def __init__(self, template: dict[str, Any], invoke: Invoke, *, host: str = "127.0.0.1", port: int = 3000) -> None:
        super().__init__(template, invoke)
        self._server = ThreadingHTTPServer((host, port), self._handler_class())
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> None:
        self._thread = threading.Thread(target=self._server.serve_forever, name="local-api", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:  # shutdown() waits for serve_forever, so only once it runs
            self._server.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._server.server_close()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        gateway = self

        class RequestHandler(BaseHTTPRequestHandler):
            server_version = "local-api-gateway"
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _serve(self) -> None:
                body = self._read_body()
                if body is None:
                    return
                headers = {name: value for name, value in self.headers.items()}
                try:
                    reply = gateway.handle(self.command, self.path, headers, body, self.client_address[0])
                except Exception:
                    log.exception("local API gateway: %s %s", self.command, self.path)
                    reply = _json_reply(HTTPStatus.INTERNAL_SERVER_ERROR, {"message": "Internal server error"})
                self._reply(*reply)

            def _read_body(self) -> bytes | None:
                """The body by Content-Length; None after answering a request that cannot be read
                (the connection is then closed: what is left of the request is not read)."""
                if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
                    self._refuse(HTTPStatus.LENGTH_REQUIRED, "Length Required")
                    return None
                declared = (self.headers.get("Content-Length") or "0").strip()
                if not (declared.isascii() and declared.isdigit()):
                    self._refuse(HTTPStatus.BAD_REQUEST, "Invalid Content-Length")
                    return None
                length = int(declared)
                if length > MAX_BODY_BYTES:
                    self._refuse(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "Request Too Long")
                    return None
                return self.rfile.read(length) if length else b""

            def _refuse(self, status: HTTPStatus, message: str) -> None:
                self.close_connection = True
                self._reply(*_json_reply(status, {"message": message}))
                return None

            def _reply(self, status: int, headers: dict[str, list[str]], body: bytes) -> None:
                self.send_response(status)
                for name, values in headers.items():
                    if name.lower() not in ("content-length", "connection"):
                        for value in values:
                            self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                if self.close_connection:
                    self.send_header("Connection", "close")
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_HEAD = _serve

        return RequestHandler


def _header(headers: dict[str, str], name: str) -> str | None:
    return next((value for key, value in headers.items() if key.lower() == name.lower()), None)


def _event_body(body: bytes) -> str | None:
    # Without binary media types API Gateway hands the body over as text.
    return body.decode("utf-8", errors="replace") if body else None


def _json_reply(status: int, body: Any) -> tuple[int, dict[str, list[str]], bytes]:
    return status, {"Content-Type": ["application/json"]}, json.dumps(body).encode()


def _lambda_reply(result: Any) -> tuple[int, dict[str, list[str]], bytes]:
    """A proxy integration's response; anything else is API Gateway's 502."""
    if not isinstance(result, dict) or not isinstance(result.get("statusCode"), int):
        return _json_reply(HTTPStatus.BAD_GATEWAY, {"message": "Internal server error"})
    headers: dict[str, list[str]] = {}
    for name, value in (result.get("headers") or {}).items():
        headers[name] = [str(value)]
    for name, values in (result.get("multiValueHeaders") or {}).items():
        headers[name] = [str(value) for value in values]
    body = result.get("body") or ""
    try:
        raw = base64.b64decode(body, validate=True) if result.get("isBase64Encoded") else str(body).encode()
    except (binascii.Error, ValueError):  # a body flagged base64 that is not
        return _json_reply(HTTPStatus.BAD_GATEWAY, {"message": "Internal server error"})
    return result["statusCode"], headers, raw
