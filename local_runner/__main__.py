"""The local runner's commands (the Makefile's `demo`, `serve` and `invoke` call these):

python -m local_runner serve  [--port 3000] [--outbox outbox]    the system, until Ctrl-C
python -m local_runner demo   [--port 3000] [--outbox outbox]    the scenario, then exit 0/1
python -m local_runner invoke <FunctionLogicalId> <event.json> [--endpoint URL]
python -m local_runner replay-events <file.json>... --endpoint URL [--message-id ID] [--now]
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import logging
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

from local_runner.demo import dashboard_link
from local_runner.functions import FunctionSpec, LocalContext, function_specs, load_handler
from local_runner.moto_server import EmbeddedAws
from local_runner.runner import DEFAULT_OUTBOX, LocalRunner, RunnerConfig, prepare_functions
from local_runner.template import load_template

log = logging.getLogger("local_runner")


def _stop_on_signals() -> None:
    """Ctrl-C and SIGTERM both stop the runner cleanly. SIGINT is set explicitly: a shell starts
    background jobs with it ignored, and Python keeps it so."""

    def stop(signum: int, frame: FrameType | None) -> NoReturn:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def _port_or_free(host: str, port: int) -> int:
    """`port` when it can be bound, else 0 (a free one): a second runner need not fail."""
    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError:
            log.warning("port %d is taken; using a free port instead", port)
            return 0
    return port


def serve(args: argparse.Namespace) -> int:
    config = RunnerConfig(host=args.host, port=args.port, aws_port=args.aws_port, outbox=args.outbox)
    _stop_on_signals()
    try:
        with LocalRunner(config) as runner:
            assert runner.gateway is not None
            admin = runner.gateway.tokens.issue("admin", ["admins"])
            print(
                f"""
Local runner up (embedded AWS, no account, no Docker). Ctrl-C stops it.
  API        {runner.api_url}          Swagger UI: {runner.api_url}/swagger
  Dashboard  {dashboard_link(runner.api_url, admin)}
             (as "admin", in the admins group; the token lasts as long as this runner)
  AWS        {runner.aws_endpoint}     (make invoke ... ENDPOINT={runner.aws_endpoint})
  outbox     {config.outbox}/*.eml
Get a token:
  curl -s -X POST {runner.api_url}/local/token -d '{{"sub": "admin", "groups": ["admins"]}}'
""",
                flush=True,
            )
            threading.Event().wait()
    except KeyboardInterrupt:
        print("\nstopped", flush=True)
    except OSError as error:
        if error.errno != errno.EADDRINUSE:
            raise
        print(f"port {args.port} on {args.host} is in use; choose another (make serve PORT=0 picks a free one)")
        return 1
    return 0


DEMO_DISPATCHER_BUDGET_SECONDS = 15


def demo(args: argparse.Namespace) -> int:
    from local_runner.demo import run_demo

    port = _port_or_free(args.host, args.port)
    log.setLevel(logging.WARNING)  # the runner's "schedule fired" lines would break the progress display
    # Short dispatcher budgets: each service's sending passes through several hand-offs (docs/dispatch.md)
    # during the demo, and its summary shows the pace held across them.
    config = RunnerConfig(
        host=args.host,
        port=port,
        outbox=args.outbox,
        log_level="WARNING",
        environment={"DISPATCHER_BUDGET_SECONDS": str(DEMO_DISPATCHER_BUDGET_SECONDS)},
    )
    _stop_on_signals()
    try:
        with LocalRunner(config) as runner:
            print(f"local runner: API {runner.api_url}, embedded AWS {runner.aws_endpoint}", flush=True)
            return run_demo(runner.api_url, config.outbox)
    except KeyboardInterrupt:
        print("\ndemo interrupted", flush=True)
        return 130


def invoke(args: argparse.Namespace) -> int:
    """`sam local invoke` without Docker: one handler, one event, against the embedded AWS (a fresh
    one with the template's resources, or a running one given by --endpoint)."""
    template = load_template()
    specs = function_specs(template)
    if args.function not in specs:
        print(f"unknown function {args.function!r}; the template has: {', '.join(sorted(specs))}", file=sys.stderr)
        return 2
    try:
        event = json.loads(args.event.read_text())
    except (OSError, ValueError) as error:
        print(f"cannot read the event {args.event}: {error}", file=sys.stderr)
        return 2
    aws = None
    if args.endpoint is None:
        aws = EmbeddedAws().start()
        endpoint = aws.endpoint_url
    else:
        endpoint = args.endpoint
    try:
        prepare_functions(endpoint, specs)
        return _invoke_and_print(specs[args.function], event)
    finally:
        if aws is not None:
            aws.stop()


def _invoke_and_print(spec: FunctionSpec, event: dict[str, Any]) -> int:
    """The result on stdout, the function's logs on stderr (as `sam local invoke` does). The handler
    is imported under the redirection too: its logger binds the stream it sees at import."""
    with contextlib.redirect_stdout(sys.stderr):
        handler = load_handler(spec)
        try:
            result = handler(event, LocalContext(spec))
        except Exception as error:  # reported like Lambda's errorType / errorMessage
            result, failed = {"errorType": type(error).__name__, "errorMessage": str(error)}, True
        else:
            failed = False
    print(json.dumps(result, indent=2, default=str))
    return 1 if failed else 0


def replay_events(args: argparse.Namespace) -> int:
    """SES event files (events/ses/*.json) into a running runner's SES events topic or queue, e.g.
    with the message id of an email in its outbox (the part of the .eml name after the number)."""
    import boto3

    from local_runner.moto_server import aws_environment
    from local_runner.ses_events import QUEUE_LOGICAL_ID, TOPIC_LOGICAL_ID, replay

    environment = aws_environment(args.endpoint)
    session = boto3.Session(
        aws_access_key_id=environment["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=environment["AWS_SECRET_ACCESS_KEY"],
        aws_session_token=environment["AWS_SESSION_TOKEN"],
        region_name=environment["AWS_REGION"],
    )
    sqs = session.client("sqs", endpoint_url=args.endpoint)
    sns = session.client("sns", endpoint_url=args.endpoint)
    try:
        queue_url = sqs.get_queue_url(QueueName=QUEUE_LOGICAL_ID)["QueueUrl"]
        topic_arn = sns.create_topic(Name=TOPIC_LOGICAL_ID)["TopicArn"]  # the runner's (idempotent)
        at = time.time() if args.now else None
        sent = replay(args.files, sqs, sns, queue_url, topic_arn, args.message_id, at)
    except (OSError, ValueError) as error:
        print(f"cannot replay: {error}", file=sys.stderr)
        return 2
    print(f"replayed {sent} SES event(s)", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m local_runner", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (("serve", "run the system until Ctrl-C"), ("demo", "run the demo scenario")):
        command = commands.add_parser(name, help=help_text)
        command.add_argument("--host", default="127.0.0.1")
        command.add_argument("--port", type=int, default=3000, help="API port (0: a free one)")
        command.add_argument("--outbox", type=Path, default=DEFAULT_OUTBOX, help="where sent mail is written")
        if name == "serve":
            command.add_argument("--aws-port", type=int, default=None, help="embedded AWS port (default: free)")
    run = commands.add_parser("invoke", help="run one function's handler on an event file")
    run.add_argument("function", help="the function's logical id in template.yaml, e.g. DispatcherFunction")
    run.add_argument("event", type=Path, help="an event file, e.g. events/dispatcher_tick.json")
    run.add_argument("--endpoint", default=None, help="a running embedded AWS (default: start a fresh one)")
    again = commands.add_parser("replay-events", help="send SES event files to a running runner's events topic")
    again.add_argument("files", type=Path, nargs="+", help="event files, e.g. events/ses/bounce_permanent_sns.json")
    again.add_argument("--endpoint", required=True, help="the running runner's embedded AWS (its banner's AWS line)")
    again.add_argument("--message-id", default=None, help="about this message instead (an SES message id)")
    again.add_argument("--now", action="store_true", help="as if the events happened now (the samples are older)")
    args = parser.parse_args(argv)

    # The runner's own lines at INFO; libraries (botocore's "found credentials", ...) only warn.
    logging.basicConfig(level=logging.WARNING, format="[runner] %(message)s", stream=sys.stderr)
    log.setLevel(logging.INFO)
    handlers = {"serve": serve, "demo": demo, "invoke": invoke, "replay-events": replay_events}
    return handlers[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
