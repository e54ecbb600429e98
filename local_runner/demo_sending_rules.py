"""The demo's third act: sending rules, through the HTTP API only.

A fifth tenant, ember, sends through a service of its own that holds Gmail to 60 a minute
(`domain_limits`), to a list that is half Gmail: the other domains go at the service's pace while
Gmail gets one a second, never two in the same second. A second campaign asks for 08:00-20:00 in
each recipient's local time (`send_window`): the recipients in a zone where it is day now are sent,
the others wait for their morning and stats count them (`waiting_for_window`). A third campaign was
scheduled two days ago with `max_lateness` of an hour: it is `expired`, not blasted late, until
ember says to send it anyway (`send-late`)."""

from __future__ import annotations

import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from email.utils import parsedate_to_datetime
from pathlib import Path

from local_runner.demo import Api, Checks, DemoFailed, Json, Say
from local_runner.demo_deliverability import _until

USER = "ember"
SENDER = "news@ember.example.org"
GMAIL = 12
OTHERS = 12
PER_ZONE = 4


def _zone(offset: int) -> str:
    """The fixed zone `offset` hours from UTC (POSIX Etc/GMT names reverse the sign)."""
    return "UTC" if offset == 0 else f"Etc/GMT{-offset:+d}"


def _zones_now() -> tuple[str, str]:
    """A zone where it is between 09:00 and 19:00 now (inside 08:00-20:00 for the whole act) and the
    zone twelve hours from it, where it is night."""
    hour = datetime.now(UTC).hour
    for offset in range(-12, 13):
        if 9 <= (hour + offset) % 24 < 19:
            return _zone(offset), _zone(offset + 12 if offset <= 0 else offset - 12)
    raise DemoFailed("no zone found for the window")  # every hour has one: this cannot happen


def _until_status(api: Api, task_id: str, status: str, deadline: float, what: str) -> Json:
    def reached() -> Json | None:
        task = _task(api, task_id)
        return task if task["status"] == status else None

    return _until(deadline, what, reached)


def _campaign(api: Api, sender_id: str, template_id: str, tag: str, **fields: object) -> str:
    task = {
        "name": f"Ember {tag}",
        "sender_id": sender_id,
        "templates": [template_id],
        "recipient_rule": {"type": "tag_based", "include_tags": [tag]},
        **fields,
    }
    return str(api.call("POST", "/api/tasks", task, as_user=USER)["task_id"])


def _contact(email: str, tag: str, timezone: str | None = None) -> Json:
    contact: Json = {"email": email, "name": email.split("@")[0], "tags": [tag]}
    if timezone:
        contact["timezone"] = timezone
    return contact


def _task(api: Api, task_id: str) -> Json:
    found: Json = api.call("GET", f"/api/tasks/{task_id}", as_user=USER)
    return found


def _gmail_seconds(outbox: Path) -> Counter[str]:
    """Emails the outbox holds for ember's gmail recipients, per second of their Date header."""
    seconds: Counter[str] = Counter()
    for path in outbox.glob("*.eml"):
        message = message_from_bytes(path.read_bytes())
        if str(message.get("To", "")).endswith("@gmail.com>") and "ember" in str(message.get("To", "")):
            seconds[parsedate_to_datetime(str(message["Date"])).isoformat()] += 1
    return seconds


def play_sending_rules(api: Api, outbox: Path, deadline: float, say: Say, checks: Checks) -> None:
    say("")
    say("Sending rules")
    limits = {"gmail": {"per_minute": 60}}
    service = {"name": "ses-ember", "region": "us-east-1", "sending_rate": 0.1, "daily_quota": 10_000}
    service_id = api.call("POST", "/api/services", {**service, "domain_limits": limits})["service_id"]
    api.call("POST", "/api/users", {"user_id": USER, "email": "ops@ember.example.org", "quota": 500, "weight": 2})
    api.call("PUT", f"/api/users/{USER}/services", {"service_ids": [service_id]})
    sender_id = api.call("POST", "/api/senders", {"email": SENDER, "name": "Ember News"}, as_user=USER)["sender_id"]
    template = {"name": "ember", "subject": "Hi {{ name }}", "html": "<p>Hi {{ name }}</p>", "text": "Hi {{ name }}"}
    template_id = api.call("POST", "/api/templates", template, as_user=USER)["template_id"]
    day, night = _zones_now()
    contacts = [
        *(_contact(f"ember.g{n}@gmail.com", "mixed") for n in range(GMAIL)),
        *(_contact(f"o{n}@ember-{n % 3}.example.net", "mixed") for n in range(OTHERS)),
        *(_contact(f"day{n}@ember.example.com", "zoned", day) for n in range(PER_ZONE)),
        *(_contact(f"night{n}@ember.example.com", "zoned", night) for n in range(PER_ZONE)),
        *(_contact(f"late{n}@ember.example.com", "late") for n in range(3)),
    ]
    api.call("POST", "/api/contacts", {"contacts": contacts}, as_user=USER)
    window = {"start": "08:00", "end": "20:00", "timezone": "UTC"}
    two_days_ago = (datetime.now(UTC) - timedelta(days=2)).replace(microsecond=0).isoformat()

    api.call("POST", "/api/scheduler/start")
    try:
        started = time.monotonic()
        mixed = _campaign(api, sender_id, template_id, "mixed")
        zoned = _campaign(api, sender_id, template_id, "zoned", send_window=window)
        late = _campaign(api, sender_id, template_id, "late", scheduled_at=two_days_ago, max_lateness=3600)

        done = _until_status(api, mixed, "completed", deadline, "ember's half-Gmail campaign")
        took = time.monotonic() - started
        seconds = _gmail_seconds(outbox)
        most = max(seconds.values(), default=0)
        say(
            f"{USER:<6} {done['counts']['sent']} sent to a half-Gmail list in {took:.0f} s on a 10/s service "
            f"holding Gmail to 60/min: {sum(seconds.values())} Gmail emails, at most {most} in any second"
        )
        checks.check(done["counts"]["sent"] == GMAIL + OTHERS, "ember's half-Gmail campaign sent everyone once")
        checks.check(most <= 1, "Gmail got at most one email a second (its 60/min limit)")

        def waiting() -> Json | None:
            stats = api.call("GET", "/api/scheduler/stats", as_user=USER)
            task = next((t for t in stats["tasks"] if t["task_id"] == zoned), None)
            return task if task and task["counts"]["sent"] >= PER_ZONE else None

        zoned_stats = _until(deadline, "the windowed campaign's daytime zone", waiting)
        say(
            f"{USER:<6} 08:00-20:00 local: {zoned_stats['counts']['sent']} sent in {day} (day), "
            f"{zoned_stats['waiting_for_window']} wait in {night} (night)"
        )
        checks.check(
            (zoned_stats["counts"]["sent"], zoned_stats["waiting_for_window"]) == (PER_ZONE, PER_ZONE),
            "a send window mails only recipients whose local hours allow it; stats count those who wait",
        )

        expired = _until_status(api, late, "expired", deadline, "the late campaign")
        say(
            f"{USER:<6} a campaign scheduled two days ago (max_lateness 1 h): {expired['status']} ({expired['reason']})"
        )
        checks.check(expired["counts"]["sent"] == 0, "a campaign past its max_lateness is expired, not sent late")
        api.call("POST", f"/api/scheduler/tasks/{late}/send-late", as_user=USER)
        sent_late = _until_status(api, late, "completed", deadline, "the late campaign sent anyway")
        say(f"{USER:<6} after send-late: {sent_late['status']}, {sent_late['counts']['sent']} sent")
        checks.check(sent_late["counts"]["sent"] == 3, "send-late sends an expired campaign anyway")
        api.call("POST", f"/api/tasks/{zoned}/cancel", as_user=USER)  # its night zone would wait for hours
    finally:
        api.call("POST", "/api/scheduler/stop")
