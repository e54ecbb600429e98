"""Builds API Gateway REST (v1) proxy events, the shape the API Lambda receives in AWS."""

from __future__ import annotations

import json
import uuid
from typing import Any
from urllib.parse import parse_qs


def claims_for(sub: str, groups: list[str] | None = None) -> dict[str, str]:
    """The claims API Gateway's Cognito authorizer passes on: every value a string, so a list of
    groups becomes one name or the bracketed, space-separated form."""
    claims = {"sub": sub, "token_use": "id"}
    if groups:
        claims["cognito:groups"] = groups[0] if len(groups) == 1 else f"[{' '.join(groups)}]"
    return claims


def rest_event(
    method: str,
    path: str,
    *,
    resource: str | None = None,
    path_parameters: dict[str, str] | None = None,
    query: str = "",
    body: Any = None,
    claims: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
    source_ip: str = "127.0.0.1",
) -> dict[str, Any]:
    raw_body = body if isinstance(body, str) or body is None else json.dumps(body)
    # Without headers, a JSON client's; with them, exactly those (as API Gateway passes them on).
    all_headers = {"Content-Type": "application/json"} if headers is None else dict(headers)
    multi_query = parse_qs(query, keep_blank_values=True) if query else None
    request_context: dict[str, Any] = {
        "requestId": str(uuid.uuid4()),
        "stage": "v1",
        "httpMethod": method,
        "path": f"/v1{path}",
        "resourcePath": resource or path,
        "identity": {"sourceIp": source_ip},
    }
    if claims is not None:
        request_context["authorizer"] = {"claims": claims}
    return {
        "resource": resource or path,
        "path": path,
        "httpMethod": method,
        "headers": all_headers,
        "multiValueHeaders": {key: [value] for key, value in all_headers.items()},
        "queryStringParameters": {k: v[-1] for k, v in multi_query.items()} if multi_query else None,
        "multiValueQueryStringParameters": multi_query,
        "pathParameters": path_parameters,
        "stageVariables": None,
        "requestContext": request_context,
        "body": raw_body,
        "isBase64Encoded": False,
    }
