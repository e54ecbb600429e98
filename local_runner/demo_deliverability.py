"""The demo's second act: deliverability, through the HTTP API only.

A fourth tenant, dune, loads its audience from a CSV uploaded to S3 (`POST /api/imports`, then a
PUT to the presigned URL), with two bad rows and a duplicate the import reports and merges; sends
itself a test email; and mails the list, which holds SES's mailbox simulator addresses. The local
runner answers for those as SES does (docs/ses-events.md): `bounce@` bounces permanently,
`complaint@` is delivered and then complained about, the rest are delivered. The demo waits for the
SES events to come back and checks that the task counts them once, that the bounced and complained
addresses are on dune's suppression list, and that a second campaign to the same tag leaves them out."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.error import URLError
from urllib.request import ProxyHandler, Request, build_opener

from local_runner.demo import Api, Checks, DemoFailed, Json, Say

USER = "dune"
SENDER = "letters@dune.example.org"
READERS = 40
SIMULATOR = "simulator.amazonses.com"
BOUNCES = (f"bounce@{SIMULATOR}",)
COMPLAINTS = (f"complaint@{SIMULATOR}",)
DELIVERED_ONLY = (f"ooto@{SIMULATOR}",)
BAD_ROWS = ("not-an-address,Nobody,readers,Nowhere", "x@-bad-.example,Bad Domain,readers,Nowhere")
PROOF_ADDRESS = "proofs@dune.example.org"
POLL_SECONDS = 0.5


@dataclass(frozen=True)
class Audience:
    csv: bytes
    addresses: tuple[str, ...]  # distinct good addresses, in file order
    bad_lines: tuple[int, ...]  # the file's line numbers of the bad rows (the header is line 1)


def build_audience() -> Audience:
    readers = [f"reader{n:02d}@dune-readers.example.org" for n in range(READERS)]
    good = [*readers, *BOUNCES, *COMPLAINTS, *DELIVERED_ONLY]
    lines = ["email,name,tags,city"]
    lines += [f"{address},Reader {n},readers,Arrakeen" for n, address in enumerate(good)]
    lines.append(f"{readers[0]},Reader Zero (again),readers,Arrakeen")  # merged: the later row wins
    bad_start = len(lines) + 1
    lines += BAD_ROWS
    bad_lines = tuple(range(bad_start, bad_start + len(BAD_ROWS)))
    return Audience(("\n".join(lines) + "\n").encode(), tuple(good), bad_lines)


def _until(deadline: float, what: str, probe: Callable[[], Json | None]) -> Json:
    while True:
        found = probe()
        if found is not None:
            return found
        if time.monotonic() > deadline:
            raise DemoFailed(f"timed out waiting for {what}")
        time.sleep(POLL_SECONDS)


def upload(url: str, headers: dict[str, str], body: bytes) -> None:
    request = Request(url, data=body, headers=headers, method="PUT")  # noqa: S310 - the runner's own URL
    try:
        with build_opener(ProxyHandler({})).open(request, timeout=30) as reply:
            reply.read()
    except (URLError, OSError) as error:
        raise DemoFailed(f"could not upload the CSV to {url.split('?')[0]}: {error}") from None


def import_audience(api: Api, audience: Audience, deadline: float, say: Say, checks: Checks) -> None:
    created = api.call("POST", "/api/imports", {"filename": "dune-readers.csv"}, as_user=USER)
    upload(created["upload_url"], created.get("headers") or {}, audience.csv)
    import_id = created["import_id"]

    def finished() -> Json | None:
        found: Json = api.call("GET", f"/api/imports/{import_id}", as_user=USER)
        return found if found["status"] in ("completed", "failed") else None

    done = _until(deadline, "the CSV import", finished)
    errors = done.get("errors") or []
    refused = "; ".join(f"line {error['line']} {error.get('column') or ''}: {error['reason']}" for error in errors)
    say(
        f"{USER:<6} imported a CSV through S3: {done['rows_imported']} rows imported, "
        f"{done['rows_failed']} refused ({refused})"
    )
    checks.check(done["status"] == "completed", f"the CSV import completed ({done['status']})")
    checks.check(
        sorted(error["line"] for error in errors) == list(audience.bad_lines),
        f"the import reported exactly the bad lines {list(audience.bad_lines)}",
    )
    contacts = api.call("GET", "/api/contacts?tag=readers&limit=500", as_user=USER)["contacts"]
    checks.check(
        sorted(contact["email"] for contact in contacts) == sorted(audience.addresses),
        f"the {len(audience.addresses)} distinct good rows are {USER}'s contacts (a duplicate row merged)",
    )


def campaign(api: Api, name: str, sender_id: str, template_id: str) -> str:
    task = {
        "name": name,
        "sender_id": sender_id,
        "templates": [template_id],
        "recipient_rule": {"type": "tag_based", "include_tags": ["readers"]},
    }
    return str(api.call("POST", "/api/tasks", task, as_user=USER)["task_id"])


def play_deliverability(
    api: Api, outbox: Path, service_ids: list[str], deadline: float, say: Say, checks: Checks
) -> None:
    say("")
    say("Deliverability")
    audience = build_audience()
    api.call("POST", "/api/users", {"user_id": USER, "email": "ops@dune.example.org", "quota": 200})
    api.call("PUT", f"/api/users/{USER}/services", {"service_ids": service_ids})
    sender_id = api.call("POST", "/api/senders", {"email": SENDER, "name": "Dune Letters"}, as_user=USER)["sender_id"]
    template = {
        "name": "dune-letter",
        "subject": "A letter for {{ name }}",
        "html": '<p>Hello {{ name }},</p><p><a href="{{ unsubscribe_url }}">Unsubscribe</a></p>',
        "text": "Hello {{ name }},\n\nUnsubscribe: {{ unsubscribe_url }}\n",
    }
    template_id = api.call("POST", "/api/templates", template, as_user=USER)["template_id"]
    import_audience(api, audience, deadline, say, checks)

    proof = api.call("POST", f"/api/templates/{template_id}/test-send", {"email": PROOF_ADDRESS}, as_user=USER)

    def proof_in_outbox() -> Json | None:
        return next(({"path": str(p)} for p in outbox.glob(f"*{proof['message_id']}*.eml")), None)

    proof_file = Path(_until(deadline, "the test send in the outbox", proof_in_outbox)["path"])
    say(f"{USER:<6} test send to {PROOF_ADDRESS} through {proof['service_id']}: {proof_file.name}")
    checks.check("[TEST]" in proof_file.read_text(errors="replace"), "the test send is marked [TEST]")

    api.call("POST", "/api/scheduler/start")
    try:
        first = campaign(api, "Dune letters #1", sender_id, template_id)

        def reported() -> Json | None:
            task: Json = api.call("GET", f"/api/tasks/{first}", as_user=USER)
            counts = task["counts"]
            settled = counts["delivered"] + counts["bounced"] >= len(audience.addresses) and counts["complained"] >= 1
            return task if task["status"] == "completed" and settled else None

        task = _until(deadline, "SES's events for dune's campaign", reported)
        counts = task["counts"]
        say(
            f"{USER:<6} campaign {task['name']!r}: {counts['sent']} sent; SES reported "
            f"{counts['delivered']} delivered, {counts['bounced']} bounced, {counts['complained']} complained"
        )
        expected_delivered = len(audience.addresses) - len(BOUNCES)
        checks.check(
            (counts["sent"], counts["delivered"], counts["bounced"], counts["complained"])
            == (len(audience.addresses), expected_delivered, len(BOUNCES), len(COMPLAINTS)),
            f"SES's events counted once each: {expected_delivered} delivered, {len(BOUNCES)} bounced, "
            f"{len(COMPLAINTS)} complained",
        )
        listed = {
            entry["email"]: entry["reason"]
            for entry in api.call("GET", "/api/suppressions", as_user=USER)["suppressions"]
        }
        shown = ", ".join(f"{email} ({reason})" for email, reason in sorted(listed.items()))
        say(f"{USER:<6} suppression list: {shown}")
        checks.check(
            listed == {**dict.fromkeys(BOUNCES, "bounced"), **dict.fromkeys(COMPLAINTS, "complained")},
            "the bounced and complained addresses are on the tenant's suppression list, and nothing else",
        )
        second = campaign(api, "Dune letters #2", sender_id, template_id)
        planned = _until(
            deadline,
            "the second campaign's plan",
            lambda: (lambda t: t if t["status"] != "planning" else None)(
                api.call("GET", f"/api/tasks/{second}", as_user=USER)
            ),
        )
        api.call("POST", f"/api/tasks/{second}/cancel", as_user=USER)
        total = planned["counts"]["total"]
        say(f"{USER:<6} a second campaign to the same tag plans {total} recipients (then cancelled)")
        checks.check(
            total == len(audience.addresses) - len(BOUNCES) - len(COMPLAINTS),
            "a later campaign leaves the suppressed addresses out",
        )
    finally:
        api.call("POST", "/api/scheduler/stop")
