"""The operator page in a real browser: `python -m local_runner serve` on a free port with a service,
two tenants and their campaigns (one sent to the end, one paused with its emails queued), then
headless Chromium (Debian's `chromium`) opens the `/dashboard#token=…` link the runner printed and
runs the page's script against the live API. The DOM it renders must show the scheduler's state, the
service and both tasks with the numbers `GET /api/scheduler/status` and `/stats` answer; a refused
token must show the 401; and a screenshot must be a real PNG of it.

Chromium's `--virtual-time-budget` runs the page's timers (the 3 s refresh included) until the budget
is spent, waiting for network requests, so the test needs no sleep. Without Chromium the tests
skip, unless REQUIRE_BROWSER=1 (CI sets it, so a missing browser fails the build)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from local_runner.demo import Api
from tests.support.serving import serve, until

BROWSER = os.environ.get("CHROMIUM") or next(
    (found for name in ("chromium", "chromium-browser", "google-chrome") if (found := shutil.which(name))), None
)
# The page refreshes every 3 s: the budget covers its first load and one refresh.
VIRTUAL_TIME_BUDGET_MS = 4_500
# A campaign name a tenant controls: the page must show it as text, never as markup.
RISKY_NAME = 'Spring <img src=x onerror="document.title=1"> sale & "more"'


# ---------------------------------------------------------------- the browser and its DOM


@pytest.fixture(scope="module")
def browser() -> str:
    if BROWSER is None:
        if os.environ.get("REQUIRE_BROWSER") == "1":
            pytest.fail("REQUIRE_BROWSER=1 but no Chromium found (apt-get install chromium)", pytrace=False)
        pytest.skip("no Chromium (apt-get install chromium; CI sets REQUIRE_BROWSER=1)")
    return BROWSER


def chromium(browser: str, url: str, profile: Path, *mode: str) -> str:
    """Headless Chromium on `url` with `mode` (--dump-dom or --screenshot=...); its stdout."""
    command = [
        browser,
        "--headless",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-extensions",
        "--no-proxy-server",  # the API is local, whatever proxy the environment names
        "--hide-scrollbars",
        "--window-size=1280,720",
        f"--user-data-dir={profile}",
        f"--virtual-time-budget={VIRTUAL_TIME_BUDGET_MS}",
        *mode,
        url,
    ]
    if os.geteuid() == 0:  # Chromium's sandbox refuses to run as root
        command.insert(1, "--no-sandbox")
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)  # noqa: S603
    assert done.returncode == 0, f"chromium exited {done.returncode}:\n{done.stderr[-3000:]}"
    return done.stdout


@dataclass
class Node:
    tag: str
    attrs: dict[str, str]
    children: list[Node] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)  # text directly inside, in order

    def text(self) -> str:
        return "".join(self.texts) + "".join(child.text() for child in self.children)

    def walk(self) -> Iterator[Node]:
        yield self
        for child in self.children:
            yield from child.walk()

    def find_all(self, test: Callable[[Node], bool]) -> list[Node]:
        return [node for node in self.walk() if test(node)]

    def field(self, name: str) -> str:
        found = self.find_all(lambda node: node.attrs.get("data-field") == name)
        assert len(found) == 1, (name, [node.text() for node in found])
        return found[0].text()


class _DomBuilder(HTMLParser):
    VOID = frozenset({"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "wbr"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {})
        self._open = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {name: value or "" for name, value in attrs})
        self._open[-1].children.append(node)
        if tag not in self.VOID:
            self._open.append(node)

    def handle_endtag(self, tag: str) -> None:
        while len(self._open) > 1:  # what Chromium serialises is well formed: this closes `tag`
            if self._open.pop().tag == tag:
                break

    def handle_data(self, data: str) -> None:
        self._open[-1].texts.append(data)


def parse_dom(html: str) -> Node:
    builder = _DomBuilder()
    builder.feed(html)
    builder.close()
    return builder.root


def by_id(dom: Node, element_id: str) -> Node:
    (found,) = dom.find_all(lambda node: node.attrs.get("id") == element_id)
    return found


def rows(dom: Node, key: str) -> dict[str, Node]:
    return {node.attrs[key]: node for node in dom.find_all(lambda node: node.tag == "tr" and key in node.attrs)}


def shown(number: float) -> str:
    """A count as the page writes it (Intl.NumberFormat("en-US"): 1,234)."""
    return f"{number:,.0f}"


# ---------------------------------------------------------------- the system, as `make serve` runs it


@dataclass
class Served:
    browser: str
    api: Api
    dashboard_url: str  # the admin's link the banner printed, token in the fragment
    service_id: str
    sent_task: str
    paused_task: str
    windowed_task: str


def _status(api: Api, user: str, task_id: str) -> str:
    return str(api.call("GET", f"/api/tasks/{task_id}", as_user=user)["status"])


def _tenant_campaign(api: Api, user: str, service_id: str, recipients: int, name: str, **fields: Any) -> str:
    api.call("POST", "/api/users", {"user_id": user, "email": f"{user}@example.com", "quota": 100})
    api.call("PUT", f"/api/users/{user}/services", {"service_ids": [service_id]})
    sender = api.call("POST", "/api/senders", {"email": f"news@{user}.example.com", "name": user}, as_user=user)
    contacts = [{"email": f"{user}{n}@example.org", "name": f"Reader {n}", "tags": ["all"]} for n in range(recipients)]
    api.call("POST", "/api/contacts", {"contacts": contacts}, as_user=user)
    template = api.call(
        "POST", "/api/templates", {"name": "t", "subject": "Hi {{ name }}", "html": "<p>Hi</p>"}, as_user=user
    )
    task = api.call(
        "POST",
        "/api/tasks",
        {
            "name": name,
            "sender_id": sender["sender_id"],
            "templates": [template["template_id"]],
            "recipient_rule": {"type": "tag_based", "include_tags": ["all"], "exclude_tags": []},
            **fields,
        },
        as_user=user,
    )
    return str(task["task_id"])


def _shut_window() -> dict[str, Any]:
    """A one-hour send window (UTC) that opens two hours from now: shut all through the test."""
    hour = (datetime.now(UTC).hour + 2) % 24
    return {"start": f"{hour:02d}:00", "end": f"{(hour + 1) % 24:02d}:00", "timezone": "UTC"}


@pytest.fixture(scope="module")
def served(browser: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    outbox = tmp_path_factory.mktemp("outbox")
    with serve(outbox) as served:
        api_url, dashboard_url = served.banner("API", "Dashboard")
        api = Api(api_url)
        # Given a service shared by two tenants: alice's campaign is sent to the end, bob's is paused
        # before the start with all of its emails queued (so every number holds still while we look)
        service_id = str(
            api.call(
                "POST",
                "/api/services",
                {"name": "dashboard-ses", "region": "us-east-1", "sending_rate": 0.1, "daily_quota": 500},
            )["service_id"]
        )
        # on a warm-up ramp (day 1 of the standard preset: 50 of its 500 today); carol's campaign waits
        # for a send window that opens later
        api.call("PATCH", f"/api/services/{service_id}", {"warmup": {"preset": "standard"}})
        sent_task = _tenant_campaign(api, "alice", service_id, 12, RISKY_NAME)
        paused_task = _tenant_campaign(api, "bob", service_id, 8, "Bob's weekly")
        windowed_task = _tenant_campaign(api, "carol", service_id, 5, "Carol's morning", send_window=_shut_window())
        until(
            lambda: (
                _status(api, "alice", sent_task) == _status(api, "bob", paused_task) == "queued"
                and _status(api, "carol", windowed_task) == "queued"
            ),
            30,
            "plans",
        )
        api.call("POST", f"/api/scheduler/tasks/{paused_task}/pause")
        api.call("POST", "/api/scheduler/start")
        until(lambda: _status(api, "alice", sent_task) == "completed", 60, "alice's campaign to be sent")
        yield Served(browser, api, dashboard_url, service_id, sent_task, paused_task, windowed_task)


# ---------------------------------------------------------------- what the page shows


def test_the_page_shows_the_schedulers_services_and_tasks_as_the_api_reports_them(
    served: Served, tmp_path: Path
) -> None:
    # When the operator opens the link `make serve` printed
    status = served.api.call("GET", "/api/scheduler/status")
    dom = parse_dom(chromium(served.browser, served.dashboard_url, tmp_path / "profile", "--dump-dom"))
    stats = served.api.call("GET", "/api/scheduler/stats")
    # (rates are sends over the last minutes: a minute may turn while the page loads)
    rates = {status["processing_rate"], served.api.call("GET", "/api/scheduler/status")["processing_rate"]}

    # Then it loaded without an error, and the header is the scheduler's status
    assert "hidden" in by_id(dom, "error").attrs, by_id(dom, "error").text()
    assert re.fullmatch(r"updated \d+ s ago", by_id(dom, "updated").text())
    assert by_id(dom, "scheduler-state").text() == "running"
    assert by_id(dom, "active-services").text() == shown(status["active_services"])
    assert by_id(dom, "total-queued").text() == shown(status["total_queued_subtasks"])
    assert by_id(dom, "processing-rate").text() in rates

    # and a row per service, with its health and today's quota
    services = rows(dom, "data-service-id")
    assert set(services) == {service["service_id"] for service in stats["services"]} == {served.service_id}
    service = next(service for service in stats["services"] if service["service_id"] == served.service_id)
    row = services[served.service_id]
    assert row.field("name") == "dashboard-ses"
    assert row.field("health") == "healthy"
    # (today's quota is the warm-up ramp's allowance)
    assert row.field("quota").startswith(
        f"{shown(service['used_today'])} / {shown(service['effective_daily_quota'])} ("
    )
    assert service["used_today"] == 12 and (service["daily_quota"], service["effective_daily_quota"]) == (500, 50)
    assert row.field("warmup") == "warm-up day 1 of standard"
    assert row.field("pace").endswith(f" / {shown(service['configured_rate_per_minute'])}")

    # and a row per task: the sent one complete, the paused one with everything queued
    tasks = rows(dom, "data-task-id")
    assert set(tasks) == {task["task_id"] for task in stats["tasks"]}
    assert set(tasks) == {served.sent_task, served.paused_task, served.windowed_task}
    for task in stats["tasks"]:
        row, counts = tasks[task["task_id"]], task["counts"]
        assert row.field("name") == task["name"]
        assert row.field("status") == task["status"]
        assert row.field("queued") == shown(counts["queued"])
        assert row.field("progress").startswith(f"{shown(counts['sent'])} sent of {shown(counts['total'])}")
    assert tasks[served.sent_task].field("status") == "completed"
    assert tasks[served.sent_task].field("progress").startswith("12 sent of 12")
    assert tasks[served.paused_task].field("status") == "paused"
    assert tasks[served.paused_task].field("queued") == "8"
    # and the windowed one queued, all of it waiting for its recipients' window
    assert tasks[served.windowed_task].field("status") == "queued"
    assert tasks[served.windowed_task].field("waiting_for_window") == "5 waiting for their local send window"
    assert not tasks[served.sent_task].find_all(lambda node: node.attrs.get("data-field") == "waiting_for_window")
    # The tenant's name is text: no element came out of it
    assert tasks[served.sent_task].field("name") == RISKY_NAME
    assert not dom.find_all(lambda node: node.tag == "img")


def test_a_refused_token_shows_the_401_and_asks_for_another(served: Served, tmp_path: Path) -> None:
    # When the link carries a token the API refuses
    url = served.dashboard_url.split("#", 1)[0] + "#token=not.a.token"
    dom = parse_dom(chromium(served.browser, url, tmp_path / "profile", "--dump-dom"))

    # Then the page says so, asks for a token and shows no data
    error = by_id(dom, "error")
    assert "hidden" not in error.attrs
    assert error.text().startswith("401 Unauthorized: the token was refused")
    assert "hidden" not in by_id(dom, "token-panel").attrs
    assert by_id(dom, "updated").text() == "token refused"
    assert not rows(dom, "data-task-id") and not rows(dom, "data-service-id")


def test_a_screenshot_of_the_page_is_a_png(served: Served, tmp_path: Path) -> None:
    picture = tmp_path / "dashboard.png"
    chromium(served.browser, served.dashboard_url, tmp_path / "profile", f"--screenshot={picture}")
    data = picture.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (1280, 720)
    assert len(data) > 20_000, "a page with tables and bars, not a blank one"
