"""The dispatcher's throughput and DynamoDB requests per email, against a bare SES v2 loop.

On an embedded AWS (single-threaded moto server, bench.harness), per run: fresh tables, one email
service, ten users with one planned task each (tests/support/dispatching.World), then the
dispatcher (`core.dispatch.dispatcher.dispatch_service` with the Lambda's dependencies) invoked one tick
after another until it has sent everything.

- no pacing (the smallest `sending_rate` the API accepts, 10,000/s): 1,000 emails from 10 users;
  emails per second over the invocations' wall clock, against a bare SES v2 SendEmail loop on the
  same server in the same run (the same raw MIME message the dispatcher sent, one call after
  another). Median of rounds; the ratio is paired per round.
- requests per sent email by operation (every attempt on the wire) at no pacing, 100/s, 10/s and
  1/s; the same runs carry what bench/cost.py prices: item-aware request units (DynamoDB Streams),
  the invocations' wall clock (Lambda duration) and the requests to other services.

    .venv/bin/python -m bench.dispatch [--quick]
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from typing import Any

from bench.harness import (
    CapacityMeter,
    EmbeddedWorld,
    Measure,
    SendLog,
    by_operation,
    by_service,
    median,
    pct,
    queued_left,
    rounded,
    row,
    run_dispatcher,
    say,
    seed_campaigns,
    ses_client,
    table_specs,
    warm_up,
)

NAME = "dispatch"
TARGET_RATIO = 0.5  # dispatcher emails/s over a bare SendEmail loop's
TARGET_REQUESTS_FAST = 1.0  # DynamoDB requests per email at 10/s and faster (no pacing included)
TARGET_REQUESTS_SLOW = 2.0  # at 1/s
SERVICE_ID = "svc_bench"
NO_PACING = 0.0001  # core.api.schemas.MIN_SENDING_RATE: seconds between sends


@dataclass(frozen=True)
class Pace:
    label: str
    interval: float  # the service's sending_rate: seconds between two sends
    users: int
    per_user: int

    @property
    def emails(self) -> int:
        return self.users * self.per_user

    @property
    def target(self) -> float:
        return TARGET_REQUESTS_SLOW if self.interval >= 1.0 else TARGET_REQUESTS_FAST


def paces(quick: bool) -> list[Pace]:
    if quick:
        return [
            Pace("none", NO_PACING, 10, 20),
            Pace("100/s", 0.01, 10, 10),
            Pace("10/s", 0.1, 10, 4),
            Pace("1/s", 1.0, 3, 2),
        ]
    return [
        Pace("none", NO_PACING, 10, 100),
        Pace("100/s", 0.01, 10, 50),
        Pace("10/s", 0.1, 10, 30),
        Pace("1/s", 1.0, 10, 6),
    ]


def pace_run(world: EmbeddedWorld, pace: Pace) -> dict[str, Any]:
    """One run at one pace on fresh tables; every figure cost.py needs."""
    settings = world.fresh()
    users = {f"user{index:02d}": pace.per_user for index in range(pace.users)}
    campaigns = seed_campaigns(settings, SERVICE_ID, users, sending_rate=pace.interval)
    log = SendLog()
    ses = ses_client(log)
    # After seeding: only the dispatcher's requests are counted and priced.
    with CapacityMeter(world.counter, table_specs()).observing() as meter:
        world.counter.take()
        run = run_dispatcher(world, SERVICE_ID, ses=ses, log=log, until_sent=pace.emails)
        counts = world.counter.take()
        capacity = meter.take()
    left = queued_left(list(campaigns.tasks.values()))
    assert run.sent == pace.emails and left == 0, f"{pace.label}: sent {run.sent} of {pace.emails}, {left} queued"
    dynamodb = by_operation(counts, "dynamodb")
    emails = run.sent
    return {
        "pace": pace.label,
        "interval_seconds": pace.interval,
        "emails": emails,
        "users": pace.users,
        "invocations": len(run.reports),
        "lambda_seconds": round(run.lambda_seconds, 3),
        "invocation_seconds": [round(seconds, 3) for seconds in run.invocation_seconds],
        "sending_seconds": round(run.sending_seconds, 3),
        "emails_per_second": rounded(emails / run.lambda_seconds, 2),
        "server_cpu_ms_per_email": round(1000 * run.measure.server_cpu / emails, 2),
        "client_cpu_ms_per_email": round(1000 * run.measure.client_cpu / emails, 2),
        "dynamodb_requests_per_email": round(sum(dynamodb.values()) / emails, 3),
        "dynamodb_requests_per_email_by_operation": {op: round(n / emails, 3) for op, n in dynamodb.items()},
        "requests_by_service": by_service(counts),
        "requests": {f"{service}:{op}": n for (service, op), n in sorted(counts.items())},
        "capacity": capacity.as_dict(),
        "raw_message_bytes": last_raw_message_bytes(world),
    }


def last_raw_message_bytes(world: EmbeddedWorld) -> int:
    messages = world.server.sent_raw_messages()
    return len(messages[-1].raw_data.encode("utf-8", errors="surrogateescape")) if messages else 0


def bare_send_loop(world: EmbeddedWorld, count: int) -> tuple[Measure, int]:
    """`count` SES v2 SendEmail calls of the last raw message the dispatcher sent, one after the
    other, on a client configured as the dispatcher's; returns the measure and the message size."""
    last = world.server.sent_raw_messages()[-1]
    raw = last.raw_data.encode("utf-8", errors="surrogateescape")
    ses = ses_client()
    measure = Measure()
    with measure.measure(world.pid):
        for _ in range(count):
            ses.send_email(
                FromEmailAddress=last.source,
                Destination={"ToAddresses": list(last.destinations)},
                Content={"Raw": {"Data": raw}},
                EmailTags=[{"Name": "task_id", "Value": "baseline"}],
            )
    return measure, len(raw)


def no_pacing_round(world: EmbeddedWorld, pace: Pace) -> dict[str, Any]:
    figures = pace_run(world, pace)
    world.counter.take()
    baseline, raw_bytes = bare_send_loop(world, pace.emails)
    baseline_requests = world.counter.take()
    assert by_service(baseline_requests) == {"sesv2": pace.emails}, baseline_requests
    figures["baseline_emails_per_second"] = round(pace.emails / baseline.seconds, 2)
    figures["baseline_server_cpu_ms_per_email"] = round(1000 * baseline.server_cpu / pace.emails, 2)
    figures["baseline_raw_message_bytes"] = raw_bytes
    figures["ratio"] = round(figures["emails_per_second"] / figures["baseline_emails_per_second"], 3)
    return figures


def run(quick: bool = False, rounds: int | None = None, labels: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Every pace (or those `labels` name); no pacing in `rounds` rounds with its baseline."""
    rounds = rounds or (1 if quick else 3)
    chosen = [pace for pace in paces(quick) if labels is None or pace.label in labels]
    results: dict[str, Any] = {}
    with EmbeddedWorld() as world:
        warm_up(world)
        for pace in chosen:
            started = time.monotonic()
            if pace.interval == NO_PACING:
                results[pace.label] = no_pacing(world, pace, rounds)
            else:
                say(f"dispatch: {pace.label}, {pace.emails} emails from {pace.users} users")
                results[pace.label] = pace_run(world, pace)
            say(f"dispatch: {pace.label} took {time.monotonic() - started:.0f} s")
    return results


def no_pacing(world: EmbeddedWorld, pace: Pace, rounds: int) -> dict[str, Any]:
    """Rounds of the run and its baseline; the figures of the round with the median ratio, the
    medians of the rates and ratios."""
    per_round = []
    for number in range(rounds):
        say(f"dispatch: no pacing, {pace.emails} emails from {pace.users} users, round {number + 1} of {rounds}")
        per_round.append(no_pacing_round(world, pace))
    middle = sorted(per_round, key=lambda figures: figures["ratio"])[len(per_round) // 2]
    return {
        **middle,
        "rounds": rounds,
        "ratio": round(median([f["ratio"] for f in per_round]), 3),
        "emails_per_second": round(median([f["emails_per_second"] for f in per_round]), 2),
        "baseline_emails_per_second": round(median([f["baseline_emails_per_second"] for f in per_round]), 2),
        "per_round": [
            {key: f[key] for key in ("emails_per_second", "baseline_emails_per_second", "ratio")} for f in per_round
        ],
    }


def summary(paced: dict[str, Any], quick: bool) -> dict[str, Any]:
    none = paced["none"]
    ratio = float(none["ratio"])
    rows = [
        row(
            f"no pacing, {none['emails']} emails from {none['users']} users: dispatcher vs bare SES SendEmail loop",
            f"{none['emails_per_second']:.1f} vs {none['baseline_emails_per_second']:.1f} emails/s = {ratio:.2f}x",
            f">= {TARGET_RATIO}x",
            ratio >= TARGET_RATIO,
        ),
        row(
            "embedded server CPU per email: dispatcher vs bare loop",
            f"{none['server_cpu_ms_per_email']:.1f} vs {none['baseline_server_cpu_ms_per_email']:.1f} ms",
        ),
    ]
    met = ratio >= TARGET_RATIO
    for pace in paces(quick):
        figures = paced[pace.label]
        per_email = float(figures["dynamodb_requests_per_email"])
        ops = figures["dynamodb_requests_per_email_by_operation"]
        top = ", ".join(f"{op} {n:.2f}" for op, n in sorted(ops.items(), key=lambda item: -item[1])[:3])
        ok = per_email <= pace.target
        met = met and ok
        rows.append(
            row(
                f"DynamoDB requests per email at {pace.label} ({figures['emails']} emails)",
                f"{per_email:.2f} ({top})",
                f"<= {pace.target:g}",
                ok,
            )
        )
    for label in ("100/s", "10/s"):
        figures = paced[label]
        configured = 1 / figures["interval_seconds"]
        achieved = figures["emails"] / figures["lambda_seconds"]
        rows.append(
            row(f"achieved pace at {label}, no SES latency", f"{achieved:.1f}/s ({pct(achieved / configured)})")
        )
    return {
        "name": NAME,
        "quick": quick,
        "ratio": ratio,
        "emails_per_second": none["emails_per_second"],
        "baseline_emails_per_second": none["baseline_emails_per_second"],
        "requests_per_email": {label: paced[label]["dynamodb_requests_per_email"] for label in paced},
        "paces": paced,
        "target": {
            "ratio": TARGET_RATIO,
            "requests_per_email_at_10_per_second_or_faster": TARGET_REQUESTS_FAST,
            "requests_per_email_at_1_per_second": TARGET_REQUESTS_SLOW,
        },
        "met": met,
        "rows": rows,
    }


def measure(quick: bool = False) -> dict[str, Any]:
    return summary(run(quick), quick)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", action="store_true", help="print every figure as JSON")
    args = parser.parse_args(argv)
    figures = measure(args.quick)
    for line in figures["rows"]:
        print(f"  {line['measure']:<80} {line['figure']:<40} {line['target']:<8} {line['met']}")
    if args.json:
        print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
