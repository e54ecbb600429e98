"""Gaps between consecutive sends at a configured interval of 0.05 s and of 1 s, on the real clock.

On an embedded AWS (bench.harness): one email service, two users with planned tasks, one
dispatcher invocation per interval; the gaps between the moments consecutive SendEmail requests
left this process: min, mean, p99, and the most sends in any window of max(1 s, 5 intervals). The
dispatcher paces the start of each send (claim, render, build, call), so single gaps on the wire
move by the jitter of that work; the mean is the pace.

    .venv/bin/python -m bench.pacing [--quick]
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from bench import harness
from bench.harness import (
    EmbeddedWorld,
    SendLog,
    gaps,
    max_in_window,
    percentile,
    row,
    run_dispatcher,
    say,
    seed_campaigns,
    ses_client,
    warm_up,
)

NAME = "pacing"
SERVICE_ID = "svc_pacing"
MEAN_TOLERANCE = 0.02  # the mean gap at most 2% above the interval: >= 98% of the pace


def burst_window(interval: float) -> float:
    """The window in which no more than window / interval + 1 sends may fall (pace never exceeded)."""
    return max(1.0, 5 * interval)


def intervals(quick: bool) -> list[tuple[float, int]]:
    """(interval in seconds, emails)"""
    return [(0.05, 30), (1.0, 4)] if quick else [(0.05, 200), (1.0, 12)]


def run(quick: bool = False) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with EmbeddedWorld() as world:
        warm_up(world)
        for interval, emails in intervals(quick):
            settings = world.fresh()
            users = {"user1": emails // 2, "user2": emails - emails // 2}
            seed_campaigns(settings, SERVICE_ID, users, sending_rate=interval)
            log = SendLog()
            ses = ses_client(log)
            say(f"pacing: {emails} emails at one every {interval} s")
            dispatched = run_dispatcher(world, SERVICE_ID, ses=ses, log=log)
            times = [send.at for send in dispatched.sends]
            between = gaps(times)
            window = burst_window(interval)
            results[f"{interval:g} s"] = {
                "interval_seconds": interval,
                "sends": len(dispatched.sends),
                "min": round(min(between), 4),
                "mean": round(statistics.mean(between), 4),
                "p99": round(percentile(between, 0.99), 4),
                "max": round(max(between), 4),
                "burst_window_seconds": window,
                "max_sends_in_burst_window": max_in_window(times, window),
                "allowed_sends_in_burst_window": math.floor(window / interval + 1e-9) + 1,
            }
    return results


def summary(results: dict[str, Any], quick: bool) -> dict[str, Any]:
    rows = []
    for label, figures in results.items():
        interval = figures["interval_seconds"]
        top = interval * (1 + MEAN_TOLERANCE)
        rows.append(
            row(
                f"gaps at a configured {label} interval ({figures['sends']} sends): min / mean / p99",
                f"{figures['min']:.4f} / {figures['mean']:.4f} / {figures['p99']:.4f} s",
                f"mean <= {top:.4g}",
                figures["mean"] <= top,
            )
        )
        most, allowed = figures["max_sends_in_burst_window"], figures["allowed_sends_in_burst_window"]
        rows.append(
            row(
                f"most sends in any {figures['burst_window_seconds']:g} s at {label} (pace never exceeded)",
                str(most),
                f"<= {allowed}",
                most <= allowed,
            )
        )
    return {
        "name": NAME,
        "quick": quick,
        "gaps": results,
        "target": {"mean_at_most_above_interval": MEAN_TOLERANCE},
        "met": all(line["met"] for line in rows),
        "rows": rows,
    }


def measure(quick: bool = False) -> dict[str, Any]:
    return summary(run(quick), quick)


def main(argv: list[str] | None = None) -> None:
    harness.cli(measure, __doc__, argv)


if __name__ == "__main__":
    main()
