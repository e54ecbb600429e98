"""Achieved against configured pace when SES answers in 50 ms, at 10/s, 50/s, 100/s and 200/s.

On an embedded AWS (bench.harness): one email service, ten users with planned tasks (more than the
runs can send), then per pace the service's `sending_rate` set and one dispatcher invocation of a
few seconds on an SES v2 client that sleeps 50 ms before each SendEmail (simulated network
latency, on the sending thread). Achieved pace: sends per second between the invocation's first and
last SendEmail. Also 100/s without the latency, for comparison.

    .venv/bin/python -m bench.dispatch_latency [--quick]
"""

from __future__ import annotations

import math
from typing import Any

from bench import harness
from bench.harness import (
    EmbeddedWorld,
    SendLog,
    achieved_rate,
    pct,
    queued_left,
    rounded,
    row,
    run_dispatcher,
    say,
    seed_campaigns,
    ses_client,
    set_sending_rate,
)

NAME = "dispatch_latency"
SES_LATENCY_SECONDS = 0.05
SERVICE_ID = "svc_latency"
# (emails per second, the least fraction of it to achieve; None: reported only)
TARGETS: tuple[tuple[int, float | None], ...] = ((10, 0.98), (50, 0.95), (100, 0.90), (200, None))


def run(quick: bool = False) -> dict[str, Any]:
    budget = 3.0 if quick else 10.0
    # Enough for every run at the rates reached (a run that drains the queue measures nothing after).
    users = {f"user{index:02d}": 60 if quick else 400 for index in range(10)}
    results: dict[str, Any] = {}
    with EmbeddedWorld() as world:
        settings = world.fresh()
        say(f"dispatch_latency: seeding {sum(users.values())} queued emails")
        campaigns = seed_campaigns(settings, SERVICE_ID, users, sending_rate=0.1)
        log = SendLog()
        # The first invocation warms the clients and the render worker up; not measured.
        run_dispatcher(world, SERVICE_ID, ses=ses_client(log), log=log, budget_seconds=1.0, max_invocations=1)
        plan = [(rate, SES_LATENCY_SECONDS) for rate, _ in TARGETS] + [(100, 0.0)]
        for rate, latency in plan:
            say(f"dispatch_latency: {rate}/s, SES latency {latency * 1000:.0f} ms, {budget:.0f} s")
            set_sending_rate(SERVICE_ID, 1 / rate)
            ses = ses_client(log, latency=latency)
            dispatched = run_dispatcher(world, SERVICE_ID, ses=ses, log=log, budget_seconds=budget, max_invocations=1)
            achieved = achieved_rate(dispatched.sends)
            key = f"{rate}/s" if latency else f"{rate}/s without latency"
            results[key] = {
                "configured_per_second": rate,
                "ses_latency_seconds": latency,
                "sent": dispatched.sent,
                "achieved_per_second": rounded(achieved, 2),
                "fraction": rounded(achieved / rate, 4),
                "invocation_seconds": round(dispatched.lambda_seconds, 3),
                "stop_reason": dispatched.reports[-1].stop_reason.value,
            }
        results["queued_left"] = queued_left(list(campaigns.tasks.values()))
    return results


def summary(results: dict[str, Any], quick: bool) -> dict[str, Any]:
    rows = []
    met = True
    for rate, least in TARGETS:
        figures = results[f"{rate}/s"]
        fraction = figures["fraction"] if figures["fraction"] is not None else math.nan
        ran_dry = figures["stop_reason"] != "budget_spent"
        ok = None if least is None else (fraction >= least and not ran_dry)
        met = met and ok is not False
        rows.append(
            row(
                f"configured {rate}/s, 50 ms SES latency: achieved",
                f"{figures['achieved_per_second']}/s ({pct(fraction)})" + (" (ran out of work)" if ran_dry else ""),
                f">= {least:.0%}" if least is not None else "report",
                ok,
            )
        )
    plain = results["100/s without latency"]
    rows.append(row("configured 100/s, no SES latency: achieved", f"{plain['achieved_per_second']}/s"))
    return {
        "name": NAME,
        "quick": quick,
        "achieved_fraction": {f"{rate}/s": results[f"{rate}/s"]["fraction"] for rate, _ in TARGETS},
        "runs": results,
        "target": {f"{rate}/s": least for rate, least in TARGETS if least is not None},
        "met": met,
        "rows": rows,
    }


def measure(quick: bool = False) -> dict[str, Any]:
    return summary(run(quick), quick)


def main(argv: list[str] | None = None) -> None:
    harness.cli(measure, __doc__, argv)


if __name__ == "__main__":
    main()
