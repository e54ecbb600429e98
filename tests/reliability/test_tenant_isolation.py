"""Tenant isolation over every route of template.yaml: tenant B (bob) calls each route with tenant
A's (alice's) ids in the path and the body, and finds nothing: 404 for tenant routes, 403 for the
administrators' routes, and every DynamoDB table of the template exactly as it was (scanned before
and after each call). A route added to the template without a probe here fails the suite."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote

import boto3

from core.mail.unsubscribe import sign_unsubscribe
from core.states import SuppressionReason
from core.suppressions import suppress
from local_runner.template import function_events, resources_of_type
from tests.reliability.gateway import API_FUNCTION, template
from tests.reliability.world import Tenant, World

A, B = "alice", "bob"


@dataclass(frozen=True)
class Probe:
    """One call tenant B makes with tenant A's ids, and what must come of it. `writes` is "nothing"
    (every table unchanged) or "own" (the call may add or change B's own items, e.g. B's contacts;
    never anything else). For a `status` of 200/201 the reply must name none of A's ids."""

    request: Callable[[World, Tenant, Tenant], tuple[str, Any]]  # (world, a, b) -> (path and query, body)
    status: int
    writes: Literal["nothing", "own"] = "nothing"


def _forged_token(world: World, a: Tenant, b: Tenant) -> str:
    # B can name A's user, contact and task, but cannot sign for them.
    return sign_unsubscribe("bob-guessed-this-key", A, a.contact_ids[0], a.task_id)


def _a_task_from_a_things(world: World, a: Tenant, b: Tenant) -> dict[str, Any]:
    return {"name": "hijack", "sender_id": a.sender_id, "templates": [a.template_id], "contacts": a.contact_ids}


# (method, path as in template.yaml) -> the probes of that route.
PROBES: dict[tuple[str, str], list[Probe]] = {
    ("GET", "/swagger"): [Probe(lambda w, a, b: ("/swagger?format=json", None), 200)],
    ("GET", "/unsubscribe"): [Probe(lambda w, a, b: (f"/unsubscribe?token={_forged_token(w, a, b)}", None), 422)],
    ("POST", "/unsubscribe"): [Probe(lambda w, a, b: (f"/unsubscribe?token={_forged_token(w, a, b)}", None), 422)],
    ("POST", "/api/users"): [
        Probe(lambda w, a, b: ("/api/users", {"user_id": A, "email": "x@b.example", "quota": 9}), 403)
    ],
    ("GET", "/api/users/{user_id}"): [Probe(lambda w, a, b: (f"/api/users/{A}", None), 404)],
    ("PATCH", "/api/users/{user_id}"): [
        Probe(lambda w, a, b: (f"/api/users/{A}", {"weight": 100}), 403),
        Probe(lambda w, a, b: (f"/api/users/{B}", {"weight": 100}), 403),
    ],
    ("PUT", "/api/users/{user_id}/services"): [
        Probe(lambda w, a, b: (f"/api/users/{A}/services", {"service_ids": []}), 403)
    ],
    ("POST", "/api/services"): [
        Probe(
            lambda w, a, b: (
                "/api/services",
                {"name": "x", "region": "us-east-1", "sending_rate": 1.0, "daily_quota": 1},
            ),
            403,
        )
    ],
    ("GET", "/api/services"): [Probe(lambda w, a, b: ("/api/services", None), 200)],
    ("PATCH", "/api/services/{service_id}"): [
        Probe(lambda w, a, b: (f"/api/services/{w.service_id}", {"enabled": False}), 403)
    ],
    # A's address (and so its domain) belongs to A: taken, and nothing written (not even B's rate count).
    ("POST", "/api/senders"): [
        Probe(lambda w, a, b: ("/api/senders", {"email": f"news@{A}.example", "name": "B"}), 409)
    ],
    ("GET", "/api/senders"): [Probe(lambda w, a, b: ("/api/senders", None), 200)],
    # B may keep the same recipients in its own book; A's contacts stay as they are.
    ("POST", "/api/contacts"): [
        Probe(
            lambda w, a, b: (
                "/api/contacts",
                {"contacts": [{"email": e, "name": "B's", "tags": ["b"]} for e in a.contact_emails]},
            ),
            200,
            writes="own",
        )
    ],
    ("GET", "/api/contacts"): [
        Probe(lambda w, a, b: ("/api/contacts", None), 200),
        Probe(lambda w, a, b: ("/api/contacts?tag=vip", None), 200),
    ],
    ("POST", "/api/templates"): [
        Probe(lambda w, a, b: ("/api/templates", {"name": "b", "subject": "Hi", "html": "<p>b</p>"}), 201, writes="own")
    ],
    ("GET", "/api/templates"): [Probe(lambda w, a, b: ("/api/templates", None), 200)],
    ("GET", "/api/templates/{template_id}"): [Probe(lambda w, a, b: (f"/api/templates/{a.template_id}", None), 404)],
    ("POST", "/api/templates/{template_id}/test-send"): [
        Probe(lambda w, a, b: (f"/api/templates/{a.template_id}/test-send", {"email": "qa@bob.example"}), 404),
        Probe(
            lambda w, a, b: (
                f"/api/templates/{b.template_id}/test-send",
                {"email": "qa@bob.example", "contact_id": a.contact_ids[0]},
            ),
            404,
        ),
        Probe(
            lambda w, a, b: (
                f"/api/templates/{b.template_id}/test-send",
                {"email": "qa@bob.example", "sender_id": a.sender_id},
            ),
            404,
        ),
    ],
    ("POST", "/api/templates/{template_id}/preview"): [
        Probe(lambda w, a, b: (f"/api/templates/{a.template_id}/preview", {"contact_id": b.contact_ids[0]}), 404),
        Probe(lambda w, a, b: (f"/api/templates/{b.template_id}/preview", {"contact_id": a.contact_ids[1]}), 404),
    ],
    ("POST", "/api/tasks"): [
        Probe(lambda w, a, b: ("/api/tasks", _a_task_from_a_things(w, a, b)), 404),
        Probe(lambda w, a, b: ("/api/tasks", {**_a_task_from_a_things(w, a, b), "sender_id": b.sender_id}), 404),
        Probe(
            lambda w, a, b: (
                "/api/tasks",
                {**_a_task_from_a_things(w, a, b), "sender_id": b.sender_id, "templates": [b.template_id]},
            ),
            404,
        ),
    ],
    ("GET", "/api/tasks"): [Probe(lambda w, a, b: ("/api/tasks", None), 200)],
    ("GET", "/api/tasks/{task_id}"): [Probe(lambda w, a, b: (f"/api/tasks/{a.task_id}", None), 404)],
    ("POST", "/api/tasks/{task_id}/cancel"): [Probe(lambda w, a, b: (f"/api/tasks/{a.task_id}/cancel", None), 404)],
    ("GET", "/api/scheduler/status"): [Probe(lambda w, a, b: ("/api/scheduler/status", None), 200)],
    ("GET", "/api/scheduler/stats"): [Probe(lambda w, a, b: ("/api/scheduler/stats", None), 200)],
    ("POST", "/api/services/{service_id}/check"): [
        Probe(lambda w, a, b: (f"/api/services/{w.service_id}/check", None), 403)
    ],
    ("GET", "/api/tasks/{task_id}/failures"): [Probe(lambda w, a, b: (f"/api/tasks/{a.task_id}/failures", None), 404)],
    ("POST", "/api/tasks/{task_id}/retry-failed"): [
        Probe(lambda w, a, b: (f"/api/tasks/{a.task_id}/retry-failed", None), 404)
    ],
    ("GET", "/dashboard"): [Probe(lambda w, a, b: ("/dashboard", None), 200)],
    ("POST", "/api/users/{user_id}/resume-sending"): [
        Probe(lambda w, a, b: (f"/api/users/{A}/resume-sending", None), 403)
    ],
    ("POST", "/api/services/{service_id}/resume-sending"): [
        Probe(lambda w, a, b: (f"/api/services/{w.service_id}/resume-sending", None), 403)
    ],
    # Alice's list holds her first address (a complaint); bob sees his own list only.
    ("GET", "/api/suppressions"): [
        Probe(lambda w, a, b: (f"/api/suppressions?user_id={A}", None), 404),
        Probe(lambda w, a, b: ("/api/suppressions", None), 200),
    ],
    ("GET", "/api/suppressions/export"): [
        Probe(lambda w, a, b: (f"/api/suppressions/export?user_id={A}", None), 404),
        Probe(lambda w, a, b: ("/api/suppressions/export", None), 200),
    ],
    ("DELETE", "/api/suppressions/{email}"): [
        Probe(lambda w, a, b: (f"/api/suppressions/{quote(a.contact_emails[0])}", None), 404),
        Probe(lambda w, a, b: (f"/api/suppressions/{quote(a.contact_emails[0])}?user_id={A}&force=true", None), 404),
    ],
    ("POST", "/api/suppressions"): [
        Probe(lambda w, a, b: (f"/api/suppressions?user_id={A}", {"emails": a.contact_emails}), 404),
        Probe(lambda w, a, b: ("/api/suppressions", {"emails": a.contact_emails}), 200, writes="own"),
    ],
    ("GET", "/api/imports/{import_id}"): [Probe(lambda w, a, b: (f"/api/imports/{a.import_id}", None), 404)],
    ("GET", "/api/imports"): [Probe(lambda w, a, b: ("/api/imports", None), 200)],
    # Bob's own import, uploaded under his own prefix.
    ("POST", "/api/imports"): [Probe(lambda w, a, b: ("/api/imports", {"filename": "a.csv"}), 201, writes="own")],
    ("POST", "/api/scheduler/start"): [Probe(lambda w, a, b: ("/api/scheduler/start", None), 403)],
    ("POST", "/api/scheduler/stop"): [Probe(lambda w, a, b: ("/api/scheduler/stop", None), 403)],
    ("POST", "/api/scheduler/tasks/{task_id}/pause"): [
        Probe(lambda w, a, b: (f"/api/scheduler/tasks/{a.task_id}/pause", None), 404)
    ],
    ("POST", "/api/scheduler/tasks/{task_id}/resume"): [
        Probe(lambda w, a, b: (f"/api/scheduler/tasks/{a.task_id}/resume", None), 404)
    ],
    ("POST", "/api/scheduler/tasks/{task_id}/send-late"): [
        Probe(lambda w, a, b: (f"/api/scheduler/tasks/{a.task_id}/send-late", None), 404)
    ],
}


def template_routes() -> list[tuple[str, str]]:
    return sorted(
        (props["Method"].upper(), props["Path"])
        for function, props in function_events(template(), "Api")
        if function == API_FUNCTION
    )


Snapshot = dict[str, dict[str, dict[str, Any]]]  # table -> item key -> item


def snapshot() -> Snapshot:
    """Every item of every DynamoDB table of the template."""
    dynamodb = boto3.client("dynamodb")
    tables: Snapshot = {}
    for table, props in resources_of_type(template(), "AWS::DynamoDB::Table").items():
        key_names = [key["AttributeName"] for key in props["KeySchema"]]
        items: dict[str, dict[str, Any]] = {}
        for page in dynamodb.get_paginator("scan").paginate(TableName=table, ConsistentRead=True):
            for item in page["Items"]:
                items[json.dumps([item[name] for name in key_names], sort_keys=True)] = item
        tables[table] = items
    return tables


def changes(before: Snapshot, after: Snapshot) -> list[tuple[str, str, str, dict[str, Any] | None]]:
    """(table, key, added|removed|changed, the item after) for every difference."""
    found = []
    for table in sorted(before.keys() | after.keys()):
        old, new = before.get(table, {}), after.get(table, {})
        for key in sorted(old.keys() | new.keys()):
            if key not in new:
                found.append((table, key, "removed", None))
            elif key not in old:
                found.append((table, key, "added", new[key]))
            elif old[key] != new[key]:
                found.append((table, key, "changed", new[key]))
    return found


def a_ids(a: Tenant) -> list[str]:
    return [a.task_id, a.template_id, a.sender_id, *a.contact_ids, *a.contact_emails, f"{A}@example.com"]


def owned_values(tables: Snapshot, user: str) -> set[str]:
    """Every string in the items `user` owns (contact ids are derived from the address, so two
    tenants holding one recipient hold the same contact id, each in their own item)."""
    return {
        value["S"]
        for items in tables.values()
        for item in items.values()
        if item.get("user_id", {}).get("S") == user
        for value in item.values()
        if "S" in value
    }


def test_every_template_route_has_a_probe() -> None:
    routes = template_routes()
    missing = [route for route in routes if route not in PROBES]
    stale = [route for route in PROBES if route not in routes]
    assert routes, "no Api events found for ApiFunction in template.yaml"
    assert not missing, f"routes in template.yaml without an isolation probe (add them to PROBES): {missing}"
    assert not stale, f"probes for routes template.yaml no longer has: {stale}"


def test_tenant_b_reaches_nothing_of_tenant_a(new_world: Callable[..., World]) -> None:
    # Given alice and bob, each with a sender, contacts, a template and a queued task
    world = new_world((A, B))
    a, b = world.tenants[A], world.tenants[B]
    suppress(A, a.contact_emails[0], SuppressionReason.COMPLAINED, time.time())
    failures: list[str] = []
    calls = []
    for method, path in template_routes():
        if (method, path) not in PROBES:
            failures.append(f"{method} {path}: no isolation probe")
        calls += [(method, probe) for probe in PROBES.get((method, path), [])]
    # Probes that may write bob's own items go last: bob then holds ids that equal alice's (contact
    # ids come from the address), and the other probes must still find only alice's.
    for method, probe in sorted(calls, key=lambda call: call[1].writes == "own"):
        target, body = probe.request(world, a, b)
        before = snapshot()
        # When bob calls it with alice's ids
        reply = world.call(method, target, body, user=B)
        after = snapshot()
        # Then he gets nothing of hers and changes nothing but his own
        label = f"{method} {target} {json.dumps(body) if body is not None else ''}"
        if reply.status != probe.status:
            failures.append(f"{label}: {reply.status} (expected {probe.status}) {reply.body}")
        text, sent = json.dumps(reply.body), target + json.dumps(body)
        leaked = [i for i in a_ids(a) if i in text and i not in sent and i not in owned_values(after, B)]
        if leaked:
            failures.append(f"{label}: reply names alice's {leaked}")
        for table, key, change, item in changes(before, after):
            owner = (item or {}).get("user_id", {}).get("S")
            if probe.writes == "own" and change != "removed" and owner == B:
                continue
            failures.append(f"{label}: {table} {key} {change} (owner {owner})")
    assert not failures, "tenant isolation broken:\n" + "\n".join(failures)
