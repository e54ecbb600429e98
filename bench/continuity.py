"""Sustained pace across dispatcher ticks, black-box through the local runner (`make serve`).

Starts `local_runner.runner.LocalRunner` (embedded AWS, the template's resources, the handlers in
this process behind the local API Gateway, SQS triggers, EventBridge Scheduler fired as the runner
fires it) and drives it over HTTP only: an admin creates an email service sending one email every
0.2 s (5/s) and a user; the user imports contacts, saves a sender and a template and creates a task
with more recipients than the window can send; once it is queued the admin starts the scheduler.

Send times come from SES's side of the wire: a `before-send` hook on boto3's default session, which
the handlers' SES clients (built in this process) inherit, logs when each SendEmail left and for which
task. (The subtasks' `sent_at` would do too, but the dispatcher writes them in batches of 25 or at
the end of a tick, after the moment the window closes.) Over a window of W seconds from the first
send while work is still queued (full: 185 s, at least three ticks; quick: 62 s, one tick boundary):

- achieved / configured pace over the window (target >= 98%);
- the longest gap between consecutive sends against 2 x the interval + 1 s (target: none above);
- the most sends in any 10 s (the pace never exceeded: at most 10 s / interval + 1);
- the first send's delay after `POST /api/scheduler/start` (target <= 3 s);
- full mode also: the task is cancelled, the service falls idle, a second small task is created,
  and the first send's delay after that task is queued (target <= 3 s).

    .venv/bin/python -m bench.continuity [--quick]
"""

from __future__ import annotations

import itertools
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import boto3

from bench import harness
from bench.harness import SendLog, gaps, max_in_window, pct, row, say
from local_runner.demo import Api
from local_runner.runner import LocalRunner, RunnerConfig

NAME = "continuity"
INTERVAL = 0.2  # the service's sending_rate: 5 emails/s
TARGET_FRACTION = 0.98
TARGET_FIRST_SEND_SECONDS = 3.0
PACE_WINDOW_SECONDS = 10.0
USER_ID = "pace-user"
POLL_SECONDS = 0.25


def max_gap_bound(interval: float) -> float:
    return 2 * interval + 1.0


def window_figures(sent_at: list[float], window: float, interval: float) -> dict[str, Any]:
    """Pace, gaps and bursts of the sends in [first send, first send + window)."""
    ordered = sorted(sent_at)
    if not ordered:
        return {"sends": 0}
    first = ordered[0]
    inside = [moment for moment in ordered if moment < first + window]
    between = gaps(inside)
    bound = max_gap_bound(interval)
    long_gaps = [
        {"after_seconds": round(earlier - first, 1), "gap_seconds": round(later - earlier, 2)}
        for earlier, later in itertools.pairwise(inside)
        if later - earlier > bound
    ]
    achieved = len(inside) / window
    return {
        "window_seconds": window,
        "sends": len(inside),
        "achieved_per_second": round(achieved, 3),
        "fraction": round(achieved * interval, 4),
        "max_gap_seconds": round(max(between), 3) if between else None,
        "gap_bound_seconds": bound,
        "gaps_above_bound": long_gaps,
        "max_sends_in_10_s": max_in_window(inside, PACE_WINDOW_SECONDS),
        "allowed_sends_in_10_s": math.floor(PACE_WINDOW_SECONDS / interval + 1e-9) + 1,
    }


# ---------------------------------------------------------------- driving the runner over HTTP


def contacts(tag: str, start: int, count: int) -> list[dict[str, Any]]:
    return [
        {"email": f"reader{number}@example.org", "name": f"Reader {number}", "tags": [tag]}
        for number in range(start, start + count)
    ]


def import_contacts(api: Api, rows: list[dict[str, Any]]) -> None:
    for start in range(0, len(rows), 1000):  # the API takes at most 1,000 a request
        api.call("POST", "/api/contacts", {"contacts": rows[start : start + 1000]}, as_user=USER_ID)


def create_task(api: Api, name: str, sender_id: str, template_id: str, tag: str) -> str:
    body = {
        "name": name,
        "sender_id": sender_id,
        "templates": [template_id],
        "recipient_rule": {"type": "tag_based", "include_tags": [tag]},
    }
    return str(api.call("POST", "/api/tasks", body, as_user=USER_ID)["task_id"])


def wait_until_queued(api: Api, task_id: str, timeout: float = 120.0) -> float:
    """Polls the task until it leaves `planning`; returns when it was first seen queued."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = api.call("GET", f"/api/tasks/{task_id}")["status"]
        if status != "planning":
            if status not in ("queued", "sending", "completed"):
                raise RuntimeError(f"task {task_id} is {status}")
            return time.time()
        time.sleep(POLL_SECONDS)
    raise RuntimeError(f"task {task_id} still planning after {timeout} s")


def sends_of(log: SendLog, task_id: str) -> list[float]:
    return sorted(send.at for send in log.sends if send.task_id == task_id)


def wait_for_first_send(log: SendLog, task_id: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not sends_of(log, task_id):
        if time.monotonic() > deadline:
            return False
        time.sleep(POLL_SECONDS)
    return True


def wait_until_idle(log: SendLog, quiet_seconds: float = 3.0, timeout: float = 60.0) -> None:
    """Until no email has left for `quiet_seconds`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        last = max((send.at for send in log.sends), default=0.0)
        if time.time() - last >= quiet_seconds:
            return
        time.sleep(POLL_SECONDS)


def logged_sends() -> SendLog:
    """A log of every SES v2 SendEmail this process's clients send from now on: the hook sits on
    boto3's default session, whose event handlers every client built from it copies."""
    log = SendLog()
    boto3.setup_default_session()
    assert boto3.DEFAULT_SESSION is not None
    boto3.DEFAULT_SESSION.events.register("before-send.sesv2.SendEmail", log.hook)
    return log


def run(quick: bool = False) -> dict[str, Any]:
    window = 62.0 if quick else 185.0
    queued = math.ceil(window / INTERVAL * 1.3)
    results: dict[str, Any] = {"configured_per_second": 1 / INTERVAL, "queued": queued}
    log = logged_sends()
    with tempfile.TemporaryDirectory(prefix="bench-outbox-") as outbox:
        # The pace alone: in AWS SES's events run elsewhere; locally they would share the embedded AWS's thread.
        config = RunnerConfig(port=0, outbox=Path(outbox), log_level="WARNING", simulate_ses_events=False)
        with LocalRunner(config) as runner:
            assert runner.scheduler is not None
            api = Api(runner.api_url, request_timeout=120.0)
            service = {"name": "bench-pace", "region": "us-east-1", "sending_rate": INTERVAL, "daily_quota": 10**7}
            service_id = api.call("POST", "/api/services", service)["service_id"]
            api.call("POST", "/api/users", {"user_id": USER_ID, "email": "pace@example.com", "quota": 10**6})
            api.call("PUT", f"/api/users/{USER_ID}/services", {"service_ids": [service_id]})
            sender = {"email": "news@pace.example.com", "name": "Pace"}
            sender_id = api.call("POST", "/api/senders", sender, as_user=USER_ID)["sender_id"]
            template = {
                "name": "pace",
                "subject": "Hello {{ name }}",
                "html": "<p>Hi {{ name }}.</p><p><a href='{{ unsubscribe_url }}'>Unsubscribe</a></p>",
                "text": "Hi {{ name }}.",
            }
            template_id = api.call("POST", "/api/templates", template, as_user=USER_ID)["template_id"]
            say(f"continuity: importing {queued} contacts (+20 for a later task) and planning")
            import_contacts(api, contacts("bulk", 0, queued) + contacts("later", queued, 20))
            task_id = create_task(api, "sustained", sender_id, template_id, "bulk")
            wait_until_queued(api, task_id)

            fired_before = runner.scheduler.fired
            started = time.time()
            api.call("POST", "/api/scheduler/start")
            say(f"continuity: scheduler started; measuring {window:.0f} s of sending at {1 / INTERVAL:g}/s")
            if not wait_for_first_send(log, task_id, timeout=120.0):
                raise RuntimeError("nothing was sent within 120 s of starting the scheduler")
            first = sends_of(log, task_id)[0]
            time.sleep(max(0.0, first + window + 1.0 - time.time()))
            sent = sends_of(log, task_id)
            results["window"] = window_figures(sent, window, INTERVAL)
            results["first_send_after_start_seconds"] = round(first - started, 3)
            results["schedule_fires_in_window"] = runner.scheduler.fired - fired_before
            results["queued_at_window_end"] = queued - len(sent)

            if not quick:
                results["after_idle"] = first_send_after_idle(api, log, task_id, sender_id, template_id)
            api.call("POST", "/api/scheduler/stop")
    return results


def first_send_after_idle(api: Api, log: SendLog, task_id: str, sender_id: str, template_id: str) -> dict[str, Any]:
    """Cancels the sustained task, waits until the service sends nothing, then creates a small task
    and measures its first send after it was queued (and after it was created)."""
    say("continuity: cancelling the sustained task; a new task once the service is idle")
    api.call("POST", f"/api/tasks/{task_id}/cancel", as_user=USER_ID)
    wait_until_idle(log)
    created = time.time()
    later = create_task(api, "later", sender_id, template_id, "later")
    queued_at = wait_until_queued(api, later)
    if not wait_for_first_send(log, later, timeout=150.0):
        return {"first_send_after_queued_seconds": None, "note": "nothing sent within 150 s"}
    first = sends_of(log, later)[0]
    return {
        "first_send_after_queued_seconds": round(first - queued_at, 3),
        "first_send_after_created_seconds": round(first - created, 3),
    }


def summary(results: dict[str, Any], quick: bool) -> dict[str, Any]:
    window = results["window"]
    fraction = float(window["fraction"])
    bound = window["gap_bound_seconds"]
    long_gaps = window["gaps_above_bound"]
    first = float(results["first_send_after_start_seconds"])
    rows = [
        row(
            f"sustained pace at 5/s over {window['window_seconds']:.0f} s ({results['schedule_fires_in_window']} "
            "schedule fires), local runner",
            f"{window['achieved_per_second']}/s = {pct(fraction)} ({window['sends']} sends)",
            f">= {TARGET_FRACTION:.0%}",
            fraction >= TARGET_FRACTION,
        ),
        row(
            "longest gap between consecutive sends while work was queued",
            f"{window['max_gap_seconds']} s; {len(long_gaps)} above {bound:g} s"
            + (f" (at {', '.join(str(g['after_seconds']) for g in long_gaps[:4])} s)" if long_gaps else ""),
            f"none above {bound:g} s",
            not long_gaps,
        ),
        row(
            "most sends in any 10 s (pace never exceeded)",
            str(window["max_sends_in_10_s"]),
            f"<= {window['allowed_sends_in_10_s']}",
            window["max_sends_in_10_s"] <= window["allowed_sends_in_10_s"],
        ),
        row(
            "first send after POST /api/scheduler/start",
            f"{first:.1f} s",
            f"<= {TARGET_FIRST_SEND_SECONDS:g} s",
            first <= TARGET_FIRST_SEND_SECONDS,
        ),
    ]
    idle = results.get("after_idle")
    if idle:
        latency = idle.get("first_send_after_queued_seconds")
        rows.append(
            row(
                "first send after a task is queued while its service is idle",
                f"{latency:.1f} s" if latency is not None else "none within 150 s",
                f"<= {TARGET_FIRST_SEND_SECONDS:g} s",
                latency is not None and latency <= TARGET_FIRST_SEND_SECONDS,
            )
        )
    return {
        "name": NAME,
        "quick": quick,
        "fraction": fraction,
        "max_gap_seconds": window["max_gap_seconds"],
        "first_send_after_start_seconds": first,
        "first_send_after_queued_seconds": (idle or {}).get("first_send_after_queued_seconds"),
        **results,
        "target": {
            "fraction": TARGET_FRACTION,
            "max_gap_seconds": bound,
            "first_send_seconds": TARGET_FIRST_SEND_SECONDS,
        },
        "met": all(line["met"] for line in rows),
        "rows": rows,
    }


def measure(quick: bool = False) -> dict[str, Any]:
    return summary(run(quick), quick)


def main(argv: list[str] | None = None) -> None:
    harness.cli(measure, __doc__, argv)


if __name__ == "__main__":
    main()
