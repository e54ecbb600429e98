"""The scenario behind `make demo`, played against a running local runner through its HTTP API only.

An admin creates two email services ("ses-fast": one send every 0.1 s; "ses-slow": one every
0.25 s, with a smaller daily quota) and three users with quotas; the users add a sender, tagged
contacts and a personalised template each, and create campaigns of very different sizes: acme
320 recipients (a tag rule), bloom 15 (explicit contact ids), cobalt about 200 (a tag rule that
includes `newsletter` and excludes `churned`). acme and cobalt share both services and bloom uses
the slow one, so round robin between users is visible on each service. Then the admin starts the
scheduler and the demo draws live progress until every campaign is complete, stops the scheduler,
prints a summary and checks it against the `.eml` files the runner wrote to the outbox.

The demo knows only the API at `api_url` (JSON, bearer tokens from the runner's
`POST /local/token`) and the files in `outbox/`. The data is seeded, so every run plans
the same recipients. The runner must be fresh: the users and services have fixed names."""

from __future__ import annotations

import email
import email.policy
import json
import math
import random
import re
import sys
import time
import unicodedata
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from email.message import EmailMessage
from email.parser import BytesHeaderParser
from pathlib import Path
from typing import Any, TextIO
from urllib.error import HTTPError, URLError
from urllib.parse import quote, urlsplit
from urllib.request import ProxyHandler, Request, build_opener

Json = dict[str, Any]
Say = Callable[[str], None]  # prints one line of the demo's output

SEED = 20261127
POLL_SECONDS = 1.0
PLAIN_PROGRESS_EVERY_SECONDS = 5.0  # without a terminal (CI logs), one compact line this often
RATE_WINDOW_SECONDS = 5.0  # a service's "current rate" is its sends over the last few seconds
OUTBOX_GRACE_SECONDS = 15.0  # the runner may write the last .eml files just after the counters move
BAR_WIDTH = 28
# The pace check counts sends in a 10 s window: long enough that one send of stamping jitter is a
# small tolerance (2% to 5% here), short enough to catch a dispatcher running ahead of its pace.
PACE_WINDOW_SECONDS = 10
ADMIN_ID = "demo-admin"

# ---------------------------------------------------------------- the scenario (seeded data)


@dataclass(frozen=True)
class ServicePlan:
    name: str
    region: str
    sending_rate: float  # minimum seconds between two sends
    daily_quota: int
    # Only used for the Message-ID domain, which tells the demo which service sent an .eml.
    from_domain: str


@dataclass(frozen=True)
class Contact:
    email: str
    name: str
    first_name: str
    city: str
    timezone: str
    tags: tuple[str, ...]
    attributes: Mapping[str, str]

    def as_json(self) -> Json:
        return {
            "email": self.email,
            "name": self.name,
            "tags": list(self.tags),
            "attributes": dict(self.attributes),
            "timezone": self.timezone,
        }


@dataclass(frozen=True)
class Template:
    name: str
    subject: str
    html: str
    text: str


@dataclass(frozen=True)
class UserPlan:
    user_id: str
    email: str
    quota: int
    services: tuple[str, ...]  # service names
    sender_email: str
    sender_name: str
    contacts: tuple[Contact, ...]
    template: Template
    campaign: str
    include_tags: tuple[str, ...] = ()  # empty: the task names every contact explicitly
    exclude_tags: tuple[str, ...] = ()

    def recipients(self) -> list[Contact]:
        """Who the planner should pick: explicit ids, or include_tags minus exclude_tags."""
        if not self.include_tags:
            return list(self.contacts)
        return [
            contact
            for contact in self.contacts
            if set(contact.tags) & set(self.include_tags) and not set(contact.tags) & set(self.exclude_tags)
        ]

    def excluded_by_tag(self) -> list[Contact]:
        """Contacts the include rule matches but an exclude tag removes."""
        return [
            contact
            for contact in self.contacts
            if set(contact.tags) & set(self.include_tags) and set(contact.tags) & set(self.exclude_tags)
        ]


@dataclass(frozen=True)
class Scenario:
    services: tuple[ServicePlan, ...]
    users: tuple[UserPlan, ...]


# One line of names reads better than fifty one-word lines.
FIRST_NAMES = (  # noqa: SIM905
    "Olivia Liam Emma Noah Amelia Oliver Sophia Elijah Isabella Lucas Mia Mateo Zoë José Chloé Søren Aisha "
    "Kenji Priya Mohammed Ingrid Tomás Fatima Hiroshi Nadia Björn Camille Diego Hannah Yusuf Léa Matías"
).split()
LAST_NAMES = (  # noqa: SIM905
    "Smith García Müller Nguyen Kowalski Rossi Johnson Dubois Tanaka Okafor Silva Jensen Patel Brown "
    "Novak Haddad O'Neill Andersson Costa Kim Fernández Schmidt"
).split()
CITIES = (
    ("Lisbon", "Europe/Lisbon"),
    ("Berlin", "Europe/Berlin"),
    ("Toronto", "America/Toronto"),
    ("Osaka", "Asia/Tokyo"),
    ("Austin", "America/Chicago"),
    ("Melbourne", "Australia/Melbourne"),
    ("Nairobi", "Africa/Nairobi"),
    ("São Paulo", "America/Sao_Paulo"),
)
MAIL_DOMAINS = ("example.com", "example.org", "example.net")


def _ascii_slug(text: str) -> str:
    # Addresses need an ASCII local part (SES cannot send to SMTPUTF8 ones): "Zoë O'Neill" → "zoe.oneill".
    folded = unicodedata.normalize("NFKD", text.replace("ø", "o")).encode("ascii", "ignore").decode().lower()
    return re.sub(r"[^a-z]", "", folded)


def _contacts(
    rng: random.Random,
    count: int,
    tags_for: Callable[[random.Random], list[str]],
    extra_attributes: Callable[[random.Random], dict[str, str]] = lambda rng: {},
) -> tuple[Contact, ...]:
    contacts = []
    for index in range(count):
        first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
        city, zone = rng.choice(CITIES)
        address = f"{_ascii_slug(first)}.{_ascii_slug(last)}{index + 1}@{rng.choice(MAIL_DOMAINS)}"
        attributes = {"first_name": first, "city": city, **extra_attributes(rng)}
        contacts.append(Contact(address, f"{first} {last}", first, city, zone, tuple(tags_for(rng)), attributes))
    return tuple(contacts)


def _maybe(rng: random.Random, tag: str, probability: float) -> list[str]:
    return [tag] if rng.random() < probability else []


def _footer_html() -> str:
    return '<p style="font-size:12px"><a href="{{ unsubscribe_url }}">Unsubscribe</a></p>'


def build_scenario(seed: int = SEED) -> Scenario:
    """Three tenants of very different sizes; the same seed gives the same contacts and tags."""
    rng = random.Random(seed)
    services = (
        ServicePlan("ses-fast", "us-east-1", 0.1, 2000, "fast.mailer.example.net"),
        ServicePlan("ses-slow", "eu-west-1", 0.25, 800, "slow.mailer.example.net"),
    )
    acme = UserPlan(
        user_id="acme",
        email="marketing@acme.example.com",
        quota=1000,
        services=("ses-fast", "ses-slow"),
        sender_email="offers@acme.example.com",
        sender_name="Acme Outdoor",
        contacts=_contacts(
            rng,
            320,
            lambda r: ["customer", *_maybe(r, "newsletter", 0.6), *_maybe(r, "vip", 0.1)],
            lambda r: {"plan": r.choice(("Trail", "Summit", "Basecamp"))},
        ),
        template=Template(
            name="members-weekend",
            subject="{{ first_name }}, your {{ plan }} weekend: 20% off trail gear",
            html="<p>Hi {{ first_name }},</p><p>Members in {{ city }} get 20% off everything this weekend.</p>"
            + _footer_html(),
            text="Hi {{ first_name }},\n\nMembers in {{ city }} get 20% off everything this weekend.\n\n"
            "Unsubscribe: {{ unsubscribe_url }}\n",
        ),
        campaign="Members weekend sale",
        include_tags=("customer",),
    )
    bloom = UserPlan(
        user_id="bloom",
        email="hello@bloom.example.com",
        quota=50,
        services=("ses-slow",),
        sender_email="hello@bloom.example.com",
        sender_name="Bloom Florists",
        contacts=_contacts(rng, 15, lambda r: ["vip"]),
        template=Template(
            name="vip-preview",
            subject="{{ first_name }}, a first look at our spring bouquets",
            html="<p>Hi {{ first_name }},</p><p>Our VIPs in {{ city }} see the spring collection first.</p>"
            + _footer_html(),
            text="Hi {{ first_name }},\n\nOur VIPs in {{ city }} see the spring collection first.\n\n"
            "Unsubscribe: {{ unsubscribe_url }}\n",
        ),
        campaign="VIP spring preview",
    )
    cobalt = UserPlan(
        user_id="cobalt",
        email="editor@cobalt.example.com",
        quota=400,
        services=("ses-fast", "ses-slow"),
        sender_email="weekly@cobalt.example.com",
        sender_name="Cobalt Weekly",
        contacts=_contacts(
            rng,
            300,
            lambda r: [*_maybe(r, "newsletter", 0.8), *_maybe(r, "churned", 0.2), *_maybe(r, "trial", 0.3)],
        ),
        template=Template(
            name="weekly-47",
            subject="Cobalt Weekly #47 for {{ first_name }}",
            html="<h1>Cobalt Weekly #47</h1><p>Hi {{ first_name }},</p><p>This week's picks for {{ city }}.</p>"
            + _footer_html(),
            text="Cobalt Weekly #47\n\nHi {{ first_name }},\n\nThis week's picks for {{ city }}.\n\n"
            "Unsubscribe: {{ unsubscribe_url }}\n",
        ),
        campaign="Weekly #47",
        include_tags=("newsletter",),
        exclude_tags=("churned",),
    )
    return Scenario(services=services, users=(acme, bloom, cobalt))


# ---------------------------------------------------------------- HTTP (standard library only)


class DemoFailed(Exception):
    """An expected failure: the message is printed and the demo exits 1, without a traceback."""


class ApiError(DemoFailed):
    def __init__(self, method: str, path: str, status: int, body: str) -> None:
        hint = ""
        if status == 409 and '"already_exists"' in body:
            hint = "\n(the demo creates fixed users and services: run it against a fresh local runner)"
        super().__init__(f"{method} {path} answered {status}: {body.strip()[:2000]}{hint}")


class Api:
    """JSON over HTTP with bearer tokens; proxies from the environment are ignored (the API is local)."""

    def __init__(self, base_url: str, request_timeout: float = 30.0) -> None:
        if urlsplit(base_url).scheme not in ("http", "https"):
            raise DemoFailed(f"API URL must be http(s): {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.request_timeout = request_timeout
        self._opener = build_opener(ProxyHandler({}))
        self._tokens: dict[str, str] = {}

    def token(self, sub: str, *, admin: bool = False) -> str:
        if sub not in self._tokens:
            body: Json = {"sub": sub, "groups": ["admins"]} if admin else {"sub": sub}
            self._tokens[sub] = str(self.call("POST", "/local/token", body, as_user=None)["token"])
        return self._tokens[sub]

    def call(self, method: str, path: str, body: Any = None, *, as_user: str | None = ADMIN_ID) -> Any:
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if as_user is not None:
            headers["Authorization"] = f"Bearer {self.token(as_user, admin=as_user == ADMIN_ID)}"
        # The scheme was checked in __init__ (http or https only).
        request = Request(f"{self.base_url}{path}", data=data, headers=headers, method=method)  # noqa: S310
        try:
            with self._opener.open(request, timeout=self.request_timeout) as reply:
                raw = reply.read()
        except HTTPError as error:
            raise ApiError(method, path, error.code, error.read().decode("utf-8", "replace")) from None
        except (URLError, OSError) as error:
            raise DemoFailed(f"{method} {path}: cannot reach the API at {self.base_url} ({error})") from None
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            raise DemoFailed(f"{method} {path} answered something that is not JSON: {raw[:300]!r}") from None


def dashboard_link(api_url: str, token: str) -> str:
    """The operator page (`GET /dashboard`) with a token in the URL fragment: one click opens it, and
    the browser never sends a fragment to any server (the page keeps it in the tab's sessionStorage)."""
    return f"{api_url.rstrip('/')}/dashboard#token={quote(token, safe='.-_')}"


# ---------------------------------------------------------------- the outbox


@dataclass(frozen=True)
class SentEmail:
    """One .eml file, read back: who sent it to whom, through which service, when."""

    path: Path
    sender: str
    recipient: str
    service_domain: str  # from the Message-ID, which the dispatcher builds from the service's from_domain
    date: datetime  # the Date header: stamped as the message is built, just before SES accepts it


def _address(message: EmailMessage, header: str) -> str:
    value = message[header]
    addresses = getattr(value, "addresses", ())
    return str(addresses[0].addr_spec).lower() if addresses else ""


def _read_sent_email(path: Path, message: EmailMessage) -> SentEmail | None:
    message_id, date = message["Message-ID"], message["Date"]
    if message_id is None or date is None or getattr(date, "datetime", None) is None:
        return None  # still being written, or not one of ours
    return SentEmail(
        path=path,
        sender=_address(message, "From"),
        recipient=_address(message, "To"),
        service_domain=str(message_id).strip().rstrip(">").rpartition("@")[2].lower(),
        date=date.datetime,
    )


class Outbox:
    """The .eml files the runner writes, in the order SES accepted them (6-digit sequence prefix).
    Files present before the demo started belong to an earlier run and are ignored."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.ignored = set(self._names())
        self.emails: dict[str, SentEmail] = {}

    def _names(self) -> list[str]:
        return sorted(path.name for path in self.folder.glob("*.eml")) if self.folder.is_dir() else []

    def files(self) -> list[Path]:
        """This run's .eml files, including any that `refresh` cannot read (no Date or Message-ID)."""
        return [self.folder / name for name in self._names() if name not in self.ignored]

    def refresh(self) -> list[SentEmail]:
        """Reads the headers of files not seen yet; returns every email so far, in outbox order."""
        parser = BytesHeaderParser(policy=email.policy.default)
        for name in self._names():
            if name in self.ignored or name in self.emails:
                continue
            path = self.folder / name
            try:
                with path.open("rb") as handle:
                    message = parser.parse(handle)
            except OSError:
                continue
            sent = _read_sent_email(path, message)
            if sent is not None:
                self.emails[name] = sent
        return [self.emails[name] for name in sorted(self.emails)]


# ---------------------------------------------------------------- setting the scenario up


@dataclass
class World:
    """The ids the API handed out."""

    service_ids: dict[str, str] = field(default_factory=dict)  # service name → id
    task_ids: dict[str, str] = field(default_factory=dict)  # user id → task id
    sender_of: dict[str, str] = field(default_factory=dict)  # sender address → user id


def create_services(api: Api, scenario: Scenario, world: World, say: Say) -> None:
    for plan in scenario.services:
        body = {
            "name": plan.name,
            "region": plan.region,
            "sending_rate": plan.sending_rate,
            "daily_quota": plan.daily_quota,
            "from_domain": plan.from_domain,
        }
        world.service_ids[plan.name] = str(api.call("POST", "/api/services", body)["service_id"])
        say(
            f"admin  created service {plan.name} ({plan.region}): one send every {plan.sending_rate:g} s "
            f"({1 / plan.sending_rate:g}/s), {plan.daily_quota} a day"
        )


def create_user(api: Api, user: UserPlan, world: World, say: Say) -> None:
    api.call("POST", "/api/users", {"user_id": user.user_id, "email": user.email, "quota": user.quota})
    service_ids = [world.service_ids[name] for name in user.services]
    api.call("PUT", f"/api/users/{user.user_id}/services", {"service_ids": service_ids})
    say(f"admin  created user {user.user_id} (quota {user.quota}) on {', '.join(user.services)}")


def import_contacts(api: Api, user: UserPlan) -> list[str]:
    contact_ids: list[str] = []
    for start in range(0, len(user.contacts), 1000):  # the API takes at most 1,000 a request
        rows = [contact.as_json() for contact in user.contacts[start : start + 1000]]
        contact_ids += api.call("POST", "/api/contacts", {"contacts": rows}, as_user=user.user_id)["contact_ids"]
    if len(contact_ids) != len(user.contacts):
        raise DemoFailed(f"{user.user_id}: imported {len(user.contacts)} contacts, got {len(contact_ids)} ids")
    return contact_ids


def create_campaign(api: Api, user: UserPlan, world: World, say: Say) -> None:
    me = user.user_id
    sender = api.call("POST", "/api/senders", {"email": user.sender_email, "name": user.sender_name}, as_user=me)
    world.sender_of[user.sender_email.lower()] = me
    contact_ids = import_contacts(api, user)
    template = user.template
    template_body = {"name": template.name, "subject": template.subject, "html": template.html, "text": template.text}
    template_id = api.call("POST", "/api/templates", template_body, as_user=me)["template_id"]
    task: Json = {"name": user.campaign, "sender_id": sender["sender_id"], "templates": [template_id]}
    if user.include_tags:
        task["recipient_rule"] = {
            "type": "tag_based",
            "include_tags": list(user.include_tags),
            "exclude_tags": list(user.exclude_tags),
        }
        audience = f"tags {'+'.join(user.include_tags)}" + "".join(f" -{tag}" for tag in user.exclude_tags)
    else:
        task["contacts"] = contact_ids
        audience = f"{len(contact_ids)} explicit contacts"
    world.task_ids[me] = str(api.call("POST", "/api/tasks", task, as_user=me)["task_id"])
    say(
        f"{me:<6} sender {user.sender_email}, {len(contact_ids)} contacts, template {template.name!r}; "
        f"campaign {user.campaign!r} ({audience}, {len(user.recipients())} expected)"
    )


# ---------------------------------------------------------------- watching the tasks


def fetch_tasks(api: Api, task_ids: Iterable[str]) -> dict[str, Json]:
    """Our tasks from the admin's task list (which holds everyone's), following its cursor."""
    wanted = set(task_ids)
    found: dict[str, Json] = {}
    cursor: str | None = None
    while True:
        query = "?limit=100" + (f"&cursor={quote(cursor)}" if cursor else "")
        page = api.call("GET", f"/api/tasks{query}")
        found.update({task["task_id"]: task for task in page["tasks"] if task["task_id"] in wanted})
        cursor = page.get("cursor")
        if not cursor or len(found) == len(wanted):
            return found


def wait_until_planned(api: Api, world: World, deadline: float, say: Say) -> dict[str, Json]:
    while True:
        tasks = {task_id: api.call("GET", f"/api/tasks/{task_id}") for task_id in world.task_ids.values()}
        planning = [task for task in tasks.values() if task["status"] == "planning"]
        if not planning:
            break
        if time.monotonic() > deadline:
            raise DemoFailed("still planning at the timeout: " + ", ".join(_describe_task(t) for t in planning))
        time.sleep(0.5)
    for user_id, task_id in world.task_ids.items():
        task = tasks[task_id]
        if task["status"] not in ("queued", "scheduled"):
            raise DemoFailed(f"{user_id}'s campaign ended planning {_describe_task(task)}")
        say(f"{user_id:<6} campaign planned: {task['counts']['total']} recipients, status {task['status']}")
    return tasks


def _describe_task(task: Json) -> str:
    counts = task["counts"]
    reason = f" ({task['reason']})" if task.get("reason") else ""
    return (
        f"{task['user_id']}/{task['name']!r} {task['status']}{reason}: {counts['sent']}/{counts['total']} sent, "
        f"{counts['queued']} queued, {counts['sending']} sending, {counts['failed']} failed, "
        f"{counts['unknown']} unknown"
    )


class ServiceRates:
    """Sends per second per service over the last few seconds, from the outbox (the quota counter moves
    in blocks of up to 50, so it cannot show a rate)."""

    def __init__(self) -> None:
        self._samples: dict[str, deque[tuple[float, int]]] = defaultdict(deque)

    def observe(self, service: str, sent: int, now: float) -> float:
        samples = self._samples[service]
        samples.append((now, sent))
        while len(samples) > 2 and now - samples[1][0] >= RATE_WINDOW_SECONDS:
            samples.popleft()
        first_time, first_count = samples[0]
        return (sent - first_count) / (now - first_time) if now > first_time else 0.0


def _bar(done: int, failed: int, total: int) -> str:
    if total <= 0:
        return "[" + " " * BAR_WIDTH + "]"
    filled = round(BAR_WIDTH * done / total)
    broken = min(BAR_WIDTH - filled, math.ceil(BAR_WIDTH * failed / total)) if failed else 0
    return "[" + "#" * filled + "!" * broken + "." * (BAR_WIDTH - filled - broken) + "]"


@dataclass(frozen=True)
class Snapshot:
    elapsed: float
    tasks: dict[str, Json]  # user id → task
    services: dict[str, Json]  # service name → service (with today's usage)
    rates: dict[str, float]  # service name → sends/s just now


def progress_lines(snapshot: Snapshot, scenario: Scenario) -> list[str]:
    lines = [f"sending for {snapshot.elapsed:5.1f} s"]
    for user in scenario.users:
        task = snapshot.tasks[user.user_id]
        counts = task["counts"]
        trouble = counts["failed"] + counts["unknown"]
        reason = f" ({task['reason']})" if task.get("reason") else ""
        lines.append(
            f"  {user.user_id:<6} {_bar(counts['sent'], trouble, counts['total'])} {counts['sent']:>4}/"
            f"{counts['total']:<4} sent {counts['queued'] + counts['sending']:>4} queued "
            f"{counts['failed']:>2} failed {counts['unknown']:>2} unknown  {task['status']}{reason}"
        )
    for plan in scenario.services:
        service = snapshot.services[plan.name]
        lines.append(
            f"  {plan.name:<8} {snapshot.rates[plan.name]:5.1f}/s now (pace {1 / plan.sending_rate:g}/s)  "
            f"quota {service['used_today']:>4}/{service['daily_quota']} used today "
            f"({service['usage_percentage']:.0f}%)"
        )
    return lines


def _task_progress(user_id: str, counts: Json) -> str:
    trouble = counts["failed"] + counts["unknown"]
    return f"{user_id} {counts['sent']}/{counts['total']}" + (f" ({trouble} failed/unknown)" if trouble else "")


def progress_line(snapshot: Snapshot, scenario: Scenario) -> str:
    tasks = " ".join(_task_progress(user.user_id, snapshot.tasks[user.user_id]["counts"]) for user in scenario.users)
    services = " ".join(
        f"{plan.name} {snapshot.rates[plan.name]:.1f}/s {snapshot.services[plan.name]['used_today']}/{plan.daily_quota}"
        for plan in scenario.services
    )
    return f"[{snapshot.elapsed:5.1f} s] sent: {tasks} | {services}"


class ProgressView:
    """Redraws a block in place on a terminal; in a log, prints one compact line every few seconds."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.is_terminal = out.isatty()
        self._drawn = 0
        self._last_plain: float | None = None

    def show(self, snapshot: Snapshot, scenario: Scenario, *, final: bool = False) -> None:
        if self.is_terminal:
            lines = progress_lines(snapshot, scenario)
            if self._drawn:
                self.out.write(f"\x1b[{self._drawn}F\x1b[J")  # back to the block's first line, clear below
            self.out.write("\n".join(lines) + "\n")
            self._drawn = len(lines)
        elif final or self._last_plain is None or snapshot.elapsed - self._last_plain >= PLAIN_PROGRESS_EVERY_SECONDS:
            self.out.write(progress_line(snapshot, scenario) + "\n")
            self._last_plain = snapshot.elapsed
        self.out.flush()


def _by_service_name(scenario: Scenario, emails: Sequence[SentEmail]) -> Counter[str]:
    name_of = {plan.from_domain: plan.name for plan in scenario.services}
    return Counter(name_of.get(sent.service_domain, "?") for sent in emails)


def take_snapshot(
    api: Api, scenario: Scenario, world: World, outbox: Outbox, rates: ServiceRates, started: float
) -> Snapshot:
    tasks = fetch_tasks(api, world.task_ids.values())
    missing = set(world.task_ids.values()) - set(tasks)
    if missing:
        raise DemoFailed(f"GET /api/tasks no longer lists task(s) {', '.join(sorted(missing))}")
    services = {service["name"]: service for service in api.call("GET", "/api/services")["services"]}
    sent_by_service = _by_service_name(scenario, outbox.refresh())
    now = time.monotonic()
    return Snapshot(
        elapsed=now - started,
        tasks={user_id: tasks[task_id] for user_id, task_id in world.task_ids.items()},
        services=services,
        rates={plan.name: rates.observe(plan.name, sent_by_service[plan.name], now) for plan in scenario.services},
    )


FINISHED_BADLY = ("rejected", "cancelled", "paused")


def watch_until_complete(
    api: Api, scenario: Scenario, world: World, outbox: Outbox, view: ProgressView, deadline: float
) -> Snapshot:
    rates = ServiceRates()
    started = time.monotonic()
    while True:
        snapshot = take_snapshot(api, scenario, world, outbox, rates, started)
        tasks = snapshot.tasks.values()
        done = all(task["status"] == "completed" for task in tasks)
        view.show(snapshot, scenario, final=done)
        if done:
            return snapshot
        stopped = [task for task in tasks if task["status"] in FINISHED_BADLY]
        if stopped:
            raise DemoFailed("campaign(s) stopped without completing: " + "; ".join(map(_describe_task, stopped)))
        if time.monotonic() > deadline:
            stuck = [task for task in tasks if task["status"] != "completed"]
            raise DemoFailed(
                f"timed out after {snapshot.elapsed:.0f} s of sending; not completed: "
                + "; ".join(map(_describe_task, stuck))
            )
        time.sleep(POLL_SECONDS)


# ---------------------------------------------------------------- the summary


def _user_of(world: World, sent: SentEmail) -> str:
    return world.sender_of.get(sent.sender, "?")


def _active_seconds(emails: Sequence[SentEmail]) -> float:
    """From the first Date to the last, counting both whole seconds."""
    if not emails:
        return 0.0
    return (max(sent.date for sent in emails) - min(sent.date for sent in emails)).total_seconds() + 1


def sends_per_minute(world: World, emails: Sequence[SentEmail], users: Sequence[str]) -> list[str]:
    """Per user: sends in each minute since the first email, total, active span and average per minute."""
    if not emails:
        return ["  (no emails)"]
    first = min(sent.date for sent in emails)
    minutes = int(_active_seconds(emails) // 60) + 1
    by_user: dict[str, list[SentEmail]] = {user: [] for user in users}
    for sent in emails:
        by_user.setdefault(_user_of(world, sent), []).append(sent)
    lines = ["  user   " + "".join(f"{f'min {m + 1}':>8}" for m in range(minutes)) + "   total  active  per min"]
    for user, sent_by_user in by_user.items():
        per_minute = Counter(int((sent.date - first).total_seconds() // 60) for sent in sent_by_user)
        span = _active_seconds(sent_by_user)
        average = f"{len(sent_by_user) * 60 / span:9.0f}" if span else f"{'-':>9}"
        columns = "".join(f"{per_minute[minute]:>8}" for minute in range(minutes))
        lines.append(f"  {user:<6} {columns}{len(sent_by_user):>8}{span:>6.0f} s{average}")
    return lines


def jain_index(values: Sequence[int]) -> float:
    """1.0 when everyone got the same, 1/n when one got everything."""
    total, squares = sum(values), sum(value * value for value in values)
    return total * total / (len(values) * squares) if squares else 1.0


@dataclass(frozen=True)
class FairWindow:
    service: str
    sends: int  # sends on the service until the first of its users ran out of work there
    per_user: dict[str, int]

    @property
    def spread(self) -> int:
        return max(self.per_user.values()) - min(self.per_user.values())


def fairness_windows(scenario: Scenario, world: World, emails: Sequence[SentEmail]) -> list[FairWindow]:
    """Per service shared by several users: from its first send until the first of those users sent its
    last email there. Every task was planned before the scheduler started, so in that window every
    one of them had queued work on the service, and round robin should give each the same count."""
    windows = []
    for plan in scenario.services:
        on_service = [sent for sent in emails if sent.service_domain == plan.from_domain]
        users = list(dict.fromkeys(_user_of(world, sent) for sent in on_service))
        if len(users) < 2:
            continue
        last_of = {_user_of(world, sent): index for index, sent in enumerate(on_service)}
        window = on_service[: min(last_of.values()) + 1]
        counts = Counter(_user_of(world, sent) for sent in window)
        windows.append(FairWindow(plan.name, len(window), {user: counts[user] for user in sorted(users)}))
    return windows


def peak_sends_in(emails: Iterable[SentEmail], seconds: int) -> int:
    """Most sends whose Date falls in any `seconds` consecutive whole seconds."""
    per_second = Counter(int(sent.date.timestamp()) for sent in emails)
    if not per_second:
        return 0
    first, last = min(per_second), max(per_second)
    return max(sum(per_second[start + offset] for offset in range(seconds)) for start in range(first, last + 1))


def pace_allows(plan: ServicePlan, seconds: int) -> int:
    """Sends at least `sending_rate` apart: at most `seconds / rate` in a window of whole seconds. Two
    more are allowed because the Date stamp is taken as the message is built, a varying few ms after
    the paced start, so sends near the window's edges can be stamped just inside it."""
    return math.floor(seconds / plan.sending_rate + 1e-9) + 2


# ---------------------------------------------------------------- checks against the outbox


@dataclass
class Checks:
    results: list[tuple[bool, str]] = field(default_factory=list)

    def check(self, passed: bool, text: str) -> None:
        self.results.append((passed, text))

    @property
    def all_passed(self) -> bool:
        return all(passed for passed, _ in self.results)


REQUIRED_HEADERS = ("From", "To", "Subject", "Date", "Message-ID", "List-Unsubscribe", "List-Unsubscribe-Post")


def _plain_text(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain",))
    return str(part.get_content()) if isinstance(part, EmailMessage) else ""


def _is_personalised(message: EmailMessage, contact: Contact) -> bool:
    """The template's variables were rendered for this contact: subject and text greet them."""
    text = _plain_text(message)
    return (
        contact.first_name in str(message["Subject"]) and f"Hi {contact.first_name}," in text and contact.city in text
    )


def check_messages(scenario: Scenario, world: World, outbox: Outbox, checks: Checks) -> None:
    """Opens every .eml with the standard email package: headers, one-click unsubscribe, personalisation.
    Every file of this run, not only those in `outbox.emails`: a message without a Date or Message-ID
    never becomes a SentEmail, and counts here as one with missing headers."""
    contact_of = {(user.user_id, contact.email): contact for user in scenario.users for contact in user.contacts}
    missing_headers: list[str] = []
    bad_unsubscribe: list[str] = []
    not_personal: list[str] = []
    files = outbox.files()
    for path in files:
        name = path.name
        with path.open("rb") as handle:
            message = email.message_from_binary_file(handle, policy=email.policy.default)
        if not isinstance(message, EmailMessage):
            missing_headers.append(name)
            continue
        if any(message[header] is None for header in REQUIRED_HEADERS):
            missing_headers.append(name)
        one_click = str(message["List-Unsubscribe-Post"] or "").strip() == "List-Unsubscribe=One-Click"
        if not (one_click and str(message["List-Unsubscribe"] or "").lstrip().startswith("<http")):
            bad_unsubscribe.append(name)
        user_id = world.sender_of.get(_address(message, "From"), "?")
        contact = contact_of.get((user_id, _address(message, "To")))
        if contact is None or not _is_personalised(message, contact):
            not_personal.append(name)
    total = len(files)
    checks.check(not missing_headers, f"{total - len(missing_headers)}/{total} have {', '.join(REQUIRED_HEADERS)}")
    checks.check(not bad_unsubscribe, f"{total - len(bad_unsubscribe)}/{total} offer RFC 8058 one-click unsubscribe")
    checks.check(
        not not_personal,
        f"{total - len(not_personal)}/{total} greet their recipient by first name and city (subject and text)"
        + (f"; not: {', '.join(not_personal[:5])}" if not_personal else ""),
    )


def check_recipients(scenario: Scenario, world: World, emails: Sequence[SentEmail], checks: Checks) -> None:
    received: dict[str, Counter[str]] = defaultdict(Counter)
    for sent in emails:
        received[_user_of(world, sent)][sent.recipient] += 1
    strangers = sum(received.pop("?", Counter()).values())
    checks.check(strangers == 0, f"every email comes from one of the demo's senders ({strangers} do not)")
    for user in scenario.users:
        got = received[user.user_id]
        expected = {contact.email for contact in user.recipients()}
        twice = sorted(address for address, count in got.items() if count > 1)
        missing, extra = expected - set(got), set(got) - expected
        checks.check(not twice, f"{user.user_id}: no recipient got the campaign twice" + _some(twice))
        checks.check(
            not missing and not extra,
            f"{user.user_id}: the {len(expected)} planned recipients each got it, nobody else"
            + _some(sorted(missing), "missing")
            + _some(sorted(extra), "unexpected"),
        )
        excluded = {contact.email for contact in user.excluded_by_tag()}
        if user.exclude_tags:
            hit = sorted(excluded & set(got))
            checks.check(
                not hit,
                f"{user.user_id}: the {len(excluded)} contacts tagged {'/'.join(user.exclude_tags)} got nothing"
                + _some(hit),
            )


def _some(items: Sequence[str], label: str = "") -> str:
    if not items:
        return ""
    shown = ", ".join(items[:5]) + (" …" if len(items) > 5 else "")
    return f" [{label + ': ' if label else ''}{shown}]"


# ---------------------------------------------------------------- the end


def wait_for_outbox(outbox: Outbox, expected: int) -> list[SentEmail]:
    """The counters may move a moment before the runner writes the last files."""
    deadline = time.monotonic() + OUTBOX_GRACE_SECONDS
    while True:
        emails = outbox.refresh()
        if len(emails) >= expected or time.monotonic() > deadline:
            return emails
        time.sleep(0.5)


def settled_services(api: Api, scenario: Scenario, emails: Sequence[SentEmail]) -> dict[str, Json]:
    """Services once each tick has released its unused quota block (ticks end when they run out of
    work), so `used_today` can be compared with what the outbox holds; gives up after a grace period."""
    sent = _by_service_name(scenario, emails)
    deadline = time.monotonic() + OUTBOX_GRACE_SECONDS
    while True:
        services = {service["name"]: service for service in api.call("GET", "/api/services")["services"]}
        settled = all(services[plan.name]["used_today"] == sent[plan.name] for plan in scenario.services)
        if settled or time.monotonic() > deadline:
            return services
        time.sleep(1.0)


def print_sends_per_minute(world: World, emails: Sequence[SentEmail], users: list[str], say: Say) -> None:
    say("Sends per user per minute, by each email's Date header (stamped as the dispatcher builds the")
    say("message, just before SES accepts it; one-second resolution), from the first email on:")
    for line in sends_per_minute(world, emails, users):
        say(line)


def print_user_quotas(api: Api, scenario: Scenario, final: Snapshot, checks: Checks, say: Say) -> None:
    say("Quota per user (GET /api/users/{id}):")
    for user in scenario.users:
        reply = api.call("GET", f"/api/users/{user.user_id}")
        counts = final.tasks[user.user_id]["counts"]
        charged = reply["quota"] - reply["remaining_quota"]
        say(
            f"  {user.user_id:<6} quota {reply['quota']:>5}, charged {charged:>4}, remaining "
            f"{reply['remaining_quota']:>5}  (sent {counts['sent']}, unknown {counts['unknown']})"
        )
        # Failed sends are refunded; an unknown outcome may have been delivered, so it stays charged.
        checks.check(
            charged == counts["sent"] + counts["unknown"],
            f"{user.user_id}: quota charged ({charged}) = sent + unknown ({counts['sent'] + counts['unknown']})",
        )


def print_services(
    scenario: Scenario, emails: Sequence[SentEmail], services: dict[str, Json], checks: Checks, say: Say
) -> None:
    say("Per service (GET /api/services, and the outbox by Message-ID domain):")
    for plan in scenario.services:
        service = services[plan.name]
        on_service = [sent for sent in emails if sent.service_domain == plan.from_domain]
        span = _active_seconds(on_service)
        rate = (len(on_service) - 1) / span if span else 0.0
        achieved = f"{rate:.1f}/s, {rate * plan.sending_rate:.0%} of its pace sustained" if span else "-"
        peak, allowed = peak_sends_in(on_service, PACE_WINDOW_SECONDS), pace_allows(plan, PACE_WINDOW_SECONDS)
        say(
            f"  {plan.name:<8} {len(on_service):>4} sent in {span:.0f} s ({achieved}; pace "
            f"{1 / plan.sending_rate:g}/s), at most {peak} in any {PACE_WINDOW_SECONDS} s; quota "
            f"{service['used_today']}/{service['daily_quota']} used today ({service['usage_percentage']:.0f}%)"
        )
        checks.check(
            service["used_today"] == len(on_service),
            f"{plan.name}: quota used today ({service['used_today']}) = emails it sent ({len(on_service)})",
        )
        checks.check(
            peak <= allowed,
            f"{plan.name}: never faster than its pace ({peak} sends in {PACE_WINDOW_SECONDS} s, at most {allowed})",
        )


def print_failures(scenario: Scenario, final: Snapshot, say: Say) -> None:
    say("Failures:")
    troubled = [
        task
        for task in (final.tasks[user.user_id] for user in scenario.users)
        if task["counts"]["failed"] or task["counts"]["unknown"]
    ]
    if not troubled:
        say("  none: no recipient failed, no outcome is unknown")
    for task in troubled:
        say(f"  {_describe_task(task)}")


# What SES reports after a send (delivered, bounced, ...) keeps arriving after a campaign completes:
# stats and the task read a moment apart may differ there, never in what was sent.
_SES_REPORTED = frozenset({"delivered", "bounced", "soft_bounced", "complained", "rejected"})


def _send_counts(counts: Json) -> Json:
    return {name: value for name, value in counts.items() if name not in _SES_REPORTED}


def print_operating_surface(
    api: Api, scenario: Scenario, final: Snapshot, services: dict[str, Json], checks: Checks, say: Say
) -> None:
    """What an operator sees (GET /api/scheduler/status and /stats, answered from counters), checked
    against the tasks and services the demo watched."""
    status = api.call("GET", "/api/scheduler/status")
    stats = api.call("GET", "/api/scheduler/stats")
    say("Operator view (GET /api/scheduler/status and /stats; the page: the dashboard link above):")
    say(
        f"  running {status['is_running']}, {status['active_services']} active services, "
        f"{status['total_queued_subtasks']} queued, {status['processing_rate']} over the last 5 minutes"
    )
    total_sent = sum(task["counts"]["sent"] for task in final.tasks.values())
    checks.check(status["total_queued_subtasks"] == 0, "status: nothing queued once every campaign completed")
    checks.check(
        status["processing_rate_per_minute"] == round(total_sent / 5, 2),
        f"status: processing rate ({status['processing_rate']}) = emails sent in the window ({total_sent}) / 5",
    )
    by_task = {task["task_id"]: task for task in stats["tasks"]}
    for user in scenario.users:
        watched = final.tasks[user.user_id]
        shown = by_task.get(watched["task_id"])
        if shown is None:
            checks.check(False, f"stats: {user.user_id}'s task is listed")
            continue
        say(f"  {user.user_id:<6} {shown['status']}, {shown['counts']['sent']} sent, {shown['rate_per_minute']}/min")
        checks.check(
            _send_counts(shown["counts"]) == _send_counts(watched["counts"]),
            f"stats: {user.user_id}'s counts = the task's counts",
        )
    for service in stats["services"]:
        say(
            f"  {service['name']:<9} healthy {service['is_healthy']}, {service['used_today']}/{service['daily_quota']}"
            f" used ({service['usage_percentage']}%), {service['rate_per_minute']}/min"
            f" of {service['configured_rate_per_minute']}/min configured"
        )
        watched_service = services.get(service["name"])
        if watched_service is not None:
            checks.check(
                service["used_today"] == watched_service["used_today"],
                f"stats: {service['name']} used today = GET /api/services ({watched_service['used_today']})",
            )


def print_fairness(scenario: Scenario, world: World, emails: Sequence[SentEmail], checks: Checks, say: Say) -> None:
    say("Fairness (round robin user → task → subtask, one email per user per round):")
    for window in fairness_windows(scenario, world, emails):
        shares = ", ".join(f"{user} {count}" for user, count in window.per_user.items())
        say(
            f"  {window.service:<8} first {window.sends} sends, while {', '.join(window.per_user)} all had work "
            f"queued there: {shares}; Jain's index {jain_index(list(window.per_user.values())):.3f}"
        )
        checks.check(
            window.spread <= 2,
            f"{window.service}: users with work queued got equal turns (spread {window.spread}, at most 2)",
        )
    say("  Jain's index is 1.0 when every user got the same number of sends and 1/n when one got them all.")


def print_checks(checks: Checks, say: Say) -> None:
    say("")
    say("Checks against the outbox")
    for passed, text in checks.results:
        say(f"  {'ok    ' if passed else 'FAILED'}  {text}")


def verify_completion(scenario: Scenario, final: Snapshot, checks: Checks) -> None:
    for user in scenario.users:
        task = final.tasks[user.user_id]
        counts = task["counts"]
        expected = len(user.recipients())
        checks.check(
            task["status"] == "completed" and counts["sent"] == expected == counts["total"],
            f"{user.user_id}: {task['name']!r} {task['status']}, {counts['sent']}/{expected} sent, "
            f"{counts['failed']} failed, {counts['unknown']} unknown",
        )


def check_outbox_count(final: Snapshot, emails: Sequence[SentEmail], checks: Checks) -> None:
    total_sent = sum(task["counts"]["sent"] for task in final.tasks.values())
    checks.check(
        len(emails) == total_sent, f"outbox holds {len(emails)} emails = the tasks' sent counts ({total_sent})"
    )


def stop_scheduler(api: Api, say: Say) -> None:
    try:
        state = api.call("POST", "/api/scheduler/stop")
    except DemoFailed as error:  # reported, but must not hide the failure that got us here
        say(f"could not stop the scheduler: {error}")
        return
    say(f"admin  stopped the scheduler ({state['services']} schedules disabled)")


def play(api: Api, outbox: Outbox, deadline: float, out: TextIO) -> bool:
    def say(text: str) -> None:
        out.write(text + "\n")
        out.flush()

    scenario = build_scenario()
    world = World()
    say(f"dashboard (live while the demo runs): {dashboard_link(api.base_url, api.token(ADMIN_ID, admin=True))}")
    if outbox.ignored:
        say(f"note: {len(outbox.ignored)} .eml files already in {outbox.folder} are from an earlier run; ignored")
    create_services(api, scenario, world, say)
    for user in scenario.users:
        create_user(api, user, world, say)
    for user in scenario.users:
        create_campaign(api, user, world, say)
    wait_until_planned(api, world, deadline, say)

    state = api.call("POST", "/api/scheduler/start")
    say(f"admin  started the scheduler ({state['services']} schedules enabled)")
    sending_started = time.monotonic()
    try:
        final = watch_until_complete(api, scenario, world, outbox, ProgressView(out), deadline)
    finally:
        stop_scheduler(api, say)
    say(f"every campaign reached 'completed' after {time.monotonic() - sending_started:.0f} s of sending")

    checks = Checks()
    verify_completion(scenario, final, checks)
    total_sent = sum(task["counts"]["sent"] for task in final.tasks.values())
    emails = wait_for_outbox(outbox, total_sent)
    services = settled_services(api, scenario, emails)
    say("")
    say("Summary")
    print_sends_per_minute(world, emails, [user.user_id for user in scenario.users], say)
    print_user_quotas(api, scenario, final, checks, say)
    print_services(scenario, emails, services, checks, say)
    print_failures(scenario, final, say)
    print_operating_surface(api, scenario, final, services, checks, say)
    print_fairness(scenario, world, emails, checks, say)
    check_outbox_count(final, emails, checks)
    check_recipients(scenario, world, emails, checks)
    check_messages(scenario, world, outbox, checks)
    from local_runner.demo_deliverability import play_deliverability  # it builds on this module

    play_deliverability(api, outbox.folder, list(world.service_ids.values()), deadline, say, checks)
    from local_runner.demo_sending_rules import play_sending_rules

    play_sending_rules(api, outbox.folder, deadline, say, checks)
    print_checks(checks, say)
    say(f"The .eml files are in {outbox.folder}")
    return checks.all_passed


def run_demo(api_url: str, outbox: Path, *, out: TextIO = sys.stdout, timeout_seconds: float = 240.0) -> int:
    """Plays the scenario against a running local runner through its HTTP API only; returns the process
    exit code (0 = every campaign completed as expected and the summary matches the outbox)."""
    deadline = time.monotonic() + timeout_seconds
    try:
        passed = play(Api(api_url), Outbox(outbox), deadline, out)
    except DemoFailed as error:
        out.write(f"\ndemo FAILED: {error}\n")
        out.flush()
        return 1
    out.write("\ndemo passed\n" if passed else "\ndemo FAILED: see the checks above\n")
    out.flush()
    return 0 if passed else 1
