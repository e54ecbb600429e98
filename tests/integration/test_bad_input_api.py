"""Fuzz-ish sweep: no body shape sent to the resource routes produces anything but a 4xx error."""

from __future__ import annotations

from typing import Any

import pytest

from core.storage.models import ContactModel, EmailServiceModel, SenderModel, TemplateModel, UserModel
from tests.conftest import ApiClient

ROUTES = [
    ("POST", "/api/services", "admin"),
    ("PATCH", "/api/services/svc_000000000000000000000000", "admin"),
    ("PUT", "/api/users/alice/services", "admin"),
    ("POST", "/api/senders", "alice"),
    ("POST", "/api/contacts", "alice"),
    ("POST", "/api/templates", "alice"),
    ("POST", "/api/templates/tpl_000000000000000000000000/preview", "alice"),
]
BODIES: list[Any] = [
    None,
    "",
    "{not json",
    "[" * 20_000,
    '"just a string"',
    "123",
    "true",
    "null",
    [],
    {"unexpected": 1},
    {"contacts": [None], "service_ids": [None], "name": {"a": 1}, "email": 1, "subject": 1.5},
    {"contacts": [{"email": "a@example.com", "attributes": {"k": "v" * 100_000}}]},
    {"service_ids": ["x" * 10_000]},
]


@pytest.mark.parametrize(("method", "path", "user"), ROUTES)
@pytest.mark.parametrize("body", BODIES, ids=range(len(BODIES)))
def test_malformed_body_is_a_4xx_in_the_error_shape(
    api: ApiClient, method: str, path: str, user: str, body: Any
) -> None:
    # When
    reply = api.call(method, path, body, user=user)
    # Then
    assert 400 <= reply.status < 500, reply.body
    assert set(reply.body) == {"error", "message", "details"}, reply.body
    for model in (EmailServiceModel, UserModel):
        assert list(model.scan()) == []
    for user_model in (SenderModel, ContactModel, TemplateModel):
        assert list(user_model.query("alice")) == []


@pytest.mark.parametrize(
    "content_type",
    ["application/x-www-form-urlencoded", "text/plain", "multipart/form-data; boundary=x", "application/xml"],
)
def test_a_body_that_is_not_json_is_415_naming_the_header_and_writes_nothing(api: ApiClient, content_type: str) -> None:
    body = {"user_id": "alice", "email": "alice@example.com", "quota": 10}
    reply = api.post("/api/users", body, headers={"Content-Type": content_type})
    assert reply.status == 415, reply.body
    assert reply.body["error"] == "unsupported_media_type"
    assert reply.body["details"] == [
        {"field": "Content-Type", "reason": f"must be application/json, not {content_type.split(';')[0]}"}
    ]
    assert list(UserModel.scan()) == []


@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=utf-8", "Application/JSON"])
def test_json_media_types_are_accepted(api: ApiClient, content_type: str) -> None:
    body = {"user_id": "alice", "email": "alice@example.com", "quota": 10}
    reply = api.post("/api/users", body, headers={"Content-Type": content_type})
    assert reply.status == 201, reply.body
