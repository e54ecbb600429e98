"""One dispatcher tick in a process of its own, for the crash tests: the test SIGKILLs some of these
mid-run, as Lambda kills an invocation at its timeout.

    python -m tests.concurrency.dispatch_worker <service_id> <budget> [--lease S] [--owner T] [--wait]
        [--max-in-flight N] [--retry-busy S]

Talks to whatever the environment points at (the embedded AWS's `environment()` plus the table
variables `Settings` reads) with the dispatcher Lambda's own runtime (settings, bound tables, SES
and DynamoDB clients). Prints `ready` once imported and bound (the test times its kill from
there; with --wait it then waits for a line on stdin, so a warm process starts its tick at once),
then the tick's report as one JSON line. With --retry-busy it keeps trying to take the service's
lease for that long (an attempt that finds the lease taken does nothing), so that the test's kills
land on ticks that hold the lease."""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid

UNSUBSCRIBE_BASE_URL = "https://api.example.com/v1/unsubscribe"
UNSUBSCRIBE_SIGNING_KEY = "test-signing-key-0123456789abcdef0123"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run one dispatcher tick for one service.")
    parser.add_argument("service_id")
    parser.add_argument("budget", type=float, help="the tick's time budget, seconds")
    parser.add_argument("--lease", type=float, help="lease seconds (default: budget + 4)")
    parser.add_argument("--owner", help="the invocation's token (default: random)")
    parser.add_argument("--max-in-flight", type=int, default=1)
    parser.add_argument("--wait", action="store_true", help="after `ready`, start only once a line arrives on stdin")
    parser.add_argument(
        "--retry-busy", type=float, default=0.0, help="while the lease is taken, try again for up to this many seconds"
    )
    args = parser.parse_args(argv)

    import dispatcher_handler  # functions/dispatcher on PYTHONPATH

    from core.dispatch.dispatcher import DispatcherDeps, StopReason, dispatch_service

    runtime = dispatcher_handler.runtime()  # load_settings() + bind_tables() + the Lambda's clients
    settings = runtime.settings
    deps = DispatcherDeps(
        clock=runtime.clock,
        ses=runtime.ses,
        dynamodb=runtime.dynamodb,
        subtasks_table=settings.subtasks_table,
        owner=args.owner or uuid.uuid4().hex,
        budget_seconds=args.budget,
        lease_seconds=args.lease if args.lease is not None else args.budget + 4.0,
        max_retries=settings.max_retries,
        retry_delay=settings.retry_delay_seconds,
        batch_size=settings.batch_size,
        unsubscribe_base_url=UNSUBSCRIBE_BASE_URL,
        unsubscribe_signing_key=UNSUBSCRIBE_SIGNING_KEY,
        max_in_flight=args.max_in_flight,
        wake=runtime.wake,  # hands off to a successor near its budget's end, as the Lambda does
        handoff_lead_seconds=0.5,
    )
    print("ready", flush=True)
    if args.wait and not sys.stdin.readline():
        return 0  # the test went away before starting us
    give_up = time.monotonic() + args.retry_busy
    report = dispatch_service(args.service_id, deps)
    while report.stop_reason is StopReason.LEASE_BUSY and time.monotonic() < give_up:
        time.sleep(0.2)
        report = dispatch_service(args.service_id, deps)  # a lease-busy tick did nothing: the same tick
    summary = report.summary()
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
