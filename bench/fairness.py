"""Round robin between users: one user with 2,000 queued emails and nine with 20 each.

On an embedded AWS (bench.harness): one email service without pacing, the ten users' tasks planned,
then dispatcher invocations until the nine small tasks are sent. From the order in which SendEmail
calls left (the `task_id` email tag of each):

- Jain's fairness index over the users' send counts while every user still had work (up to the
  send that emptied the first user's queue): 1.0 when each got the same share, 0.1 when one got all.
- each small user's first-send position (1-based) in the service's send order: round robin puts
  every user's first email among the first ten.

    .venv/bin/python -m bench.fairness [--quick]
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from bench import harness
from bench.harness import (
    EmbeddedWorld,
    Send,
    SendLog,
    jain_index,
    rounded,
    row,
    run_dispatcher,
    say,
    seed_campaigns,
    ses_client,
)

NAME = "fairness"
SERVICE_ID = "svc_fair"
NO_PACING = 0.0001
TARGET_JAIN = 0.99
SMALL_USERS = 9


def window_counts(sends: list[Send], user_of: dict[str, str], queued: dict[str, int]) -> tuple[Counter[str], int]:
    """Sends per user while every user still had work: up to and including the send that emptied
    the first user's queue (user -> how many it had queued). Returns the counts and the window's
    length in sends."""
    counts: Counter[str] = Counter({user: 0 for user in queued})
    for index, send in enumerate(sends):
        user = user_of.get(send.task_id)
        if user is None:
            continue
        counts[user] += 1
        if counts[user] >= queued[user]:
            return counts, index + 1
    return counts, len(sends)


def first_positions(sends: list[Send], user_of: dict[str, str]) -> dict[str, int]:
    """Each user's first send, as a 1-based position in the send order."""
    positions: dict[str, int] = {}
    for index, send in enumerate(sends):
        user = user_of.get(send.task_id)
        if user is not None and user not in positions:
            positions[user] = index + 1
    return positions


def run(quick: bool = False) -> dict[str, Any]:
    big, small = (200, 10) if quick else (2000, 20)
    queued = {"big": big, **{f"small{index}": small for index in range(1, SMALL_USERS + 1)}}
    with EmbeddedWorld() as world:
        settings = world.fresh()
        say(f"fairness: seeding {big} + {SMALL_USERS} x {small} queued emails")
        campaigns = seed_campaigns(settings, SERVICE_ID, queued, sending_rate=NO_PACING)
        log = SendLog()
        # Enough for the small users (round robin: ten sends a round) and a margin, not all of big's.
        dispatched = run_dispatcher(
            world,
            SERVICE_ID,
            ses=ses_client(log),
            log=log,
            budget_seconds=5.0,
            max_invocations=20,
            until_sent=small * (SMALL_USERS + 1) * 2,
        )
    user_of = campaigns.user_of
    counts, window = window_counts(dispatched.sends, user_of, queued)
    positions = first_positions(dispatched.sends, user_of)
    return {
        "queued": queued,
        "sent": len(dispatched.sends),
        "window_sends": window,
        "window_counts": dict(counts),
        "jain_index": rounded(jain_index([float(n) for n in counts.values()]), 4),
        "first_send_position": positions,
        "invocations": len(dispatched.reports),
    }


def summary(figures: dict[str, Any], quick: bool) -> dict[str, Any]:
    jain = figures["jain_index"] or 0.0
    small = {user: position for user, position in figures["first_send_position"].items() if user != "big"}
    users = len(figures["queued"])
    worst = max(small.values()) if len(small) == SMALL_USERS else None
    rows = [
        row(
            f"Jain's index over send counts while all {users} users had work ({figures['window_sends']} sends)",
            f"{jain:.4f}",
            f">= {TARGET_JAIN}",
            jain >= TARGET_JAIN,
        ),
        row(
            "small users' first-send positions",
            ", ".join(str(small[user]) for user in sorted(small)) + f" (worst {worst})",
            f"<= {users}",
            worst is not None and worst <= users,
        ),
    ]
    return {
        "name": NAME,
        "quick": quick,
        **figures,
        "target": {"jain_index": TARGET_JAIN, "first_send_position": users},
        "met": all(line["met"] for line in rows),
        "rows": rows,
    }


def measure(quick: bool = False) -> dict[str, Any]:
    return summary(run(quick), quick)


def main(argv: list[str] | None = None) -> None:
    harness.cli(measure, __doc__, argv)


if __name__ == "__main__":
    main()
