"""An embedded AWS: a single-threaded moto server in its own process, for concurrency tests and the
local runner.

Single-threaded, because moto's backends take no locks (DynamoDB's `update_item` reads, checks the
condition and writes without one), so the threaded `moto_server` / `ThreadedMotoServer` over-admit
concurrent conditional writes. Serving one request at a time makes each request atomic, as real
DynamoDB's conditional writes are. Its own process, because moto keeps its state in module globals
that a server thread would share with the caller (and with in-process `mock_aws`), and because a
process can be stopped cleanly.

Standalone: `python -m local_runner.moto_server --port 5005`.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO, Any, NoReturn

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

REGION = "us-east-1"
RAW_MESSAGES_PATH = "/_local/ses/raw-messages"
_REPO_ROOT = Path(__file__).resolve().parent.parent
# Our own calls to the server never go through an HTTP proxy from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class EmbeddedAwsError(RuntimeError):
    """The moto server failed to start or to answer."""


@dataclass(frozen=True)
class SentRawMessage:
    """A raw email that SES (v1 `send_raw_email` or v2 `send_email` with Raw content) accepted."""

    message_id: str
    source: str
    destinations: tuple[str, ...]
    raw_data: str
    # SES v2 SendEmail's EmailTags and configuration set (`ses:configuration-set`), as SES events
    # carry them in `mail.tags` (moto keeps neither: the server's route records them).
    tags: tuple[tuple[str, str], ...] = ()


class EmbeddedAws:
    """A single-threaded moto server in a child process, started and stopped as a context manager.

    >>> with EmbeddedAws() as aws:
    ...     os.environ.update(aws.environment())  # boto3 clients now talk to the server
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        host: str = "127.0.0.1",
        start_timeout: float = 30.0,
        stop_timeout: float = 5.0,
    ) -> None:
        self.host = host
        self.port = port or _free_port(host)
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._output: IO[bytes] | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        if self._process is None:
            raise EmbeddedAwsError("the server is not running")
        return self._process.pid

    def __enter__(self) -> EmbeddedAws:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> EmbeddedAws:
        if self._process is not None:
            raise EmbeddedAwsError("the server is already running")
        self._output = tempfile.TemporaryFile()  # noqa: SIM115 - closed by stop()
        pythonpath = os.pathsep.join(filter(None, [str(_REPO_ROOT), os.environ.get("PYTHONPATH")]))
        command = [sys.executable, "-m", "local_runner.moto_server", "--exit-with-parent"]
        self._process = subprocess.Popen(  # noqa: S603 - our own module, no shell
            [*command, "--host", self.host, "--port", str(self.port)],
            stdin=subprocess.PIPE,  # the child exits when this closes, even if we die without stop()
            stdout=self._output,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": pythonpath},
            start_new_session=True,  # Ctrl-C reaches only us; stop() ends the child
        )
        try:
            self._wait_until_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Terminate the server, kill it if it lingers; idempotent."""
        self._halt()
        if self._output is not None:
            self._output.close()
            self._output = None

    def _halt(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        try:
            process.terminate()
            process.wait(self.stop_timeout)
        except subprocess.TimeoutExpired:
            pass
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            if process.stdin is not None:
                process.stdin.close()

    def reset(self) -> None:
        """Forget every resource and every sent message."""
        self._call("POST", "/moto-api/reset")

    def environment(self) -> dict[str, str]:
        """What boto3 (and PynamoDB) clients need in their environment to use this server."""
        return aws_environment(self.endpoint_url)

    def sent_raw_messages(self, start: int = 0) -> list[SentRawMessage]:
        """Raw emails sent through SES since the last reset, oldest first, from the `start`th on.

        Read through this server's own `/_local/ses/raw-messages` route: moto's `/moto-api/data.json`
        serialises every instance of every model (each DynamoDB item too), which takes seconds on a
        busy table and holds the only server thread meanwhile."""
        data = json.loads(self._call("GET", f"{RAW_MESSAGES_PATH}?start={start}"))
        return [
            SentRawMessage(
                message_id=message["id"],
                source=message["source"],
                destinations=tuple(message["destinations"]),
                raw_data=message["raw_data"],
                tags=tuple((str(name), str(value)) for name, value in message.get("tags", [])),
            )
            for message in data["messages"]
        ]

    def _call(self, method: str, path: str, timeout: float = 10.0) -> bytes:
        request = urllib.request.Request(self.endpoint_url + path, method=method)  # noqa: S310 - http only
        with _OPENER.open(request, timeout=timeout) as response:
            body: bytes = response.read()
            return body

    def _wait_until_ready(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self._process.poll() is not None:
                self._fail(f"exited with code {self._process.returncode} before answering")
            try:
                self._call("GET", "/moto-api/config", timeout=1.0)
                return
            except OSError:  # refused, reset or timed out: not listening yet
                if time.monotonic() > deadline:
                    self._fail(f"did not answer within {self.start_timeout}s")
                time.sleep(0.05)

    def _fail(self, reason: str) -> NoReturn:
        self._halt()  # the child shares the output file's offset: read it only once it has gone
        output = b""
        if self._output is not None:
            self._output.seek(0)
            output = self._output.read()[-4000:]
        raise EmbeddedAwsError(
            f"moto server on {self.endpoint_url} {reason}; its output:\n{output.decode(errors='replace')}"
        )


def aws_environment(endpoint_url: str) -> dict[str, str]:
    """What boto3 (and PynamoDB) clients need in their environment to use a moto server there."""
    return {
        "AWS_ENDPOINT_URL": endpoint_url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
        "AWS_ACCOUNT_ID_ENDPOINT_MODE": "disabled",
    }


def _free_port(host: str) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


def serve(host: str, port: int, *, exit_with_parent: bool = False) -> None:
    """Run a single-threaded moto server in this process until SIGTERM, SIGINT or (optionally) EOF
    on stdin."""
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    from local_runner import moto_speedups

    moto_speedups.install()

    class Handler(MotoRequestHandler):
        # One request per connection, so a client keeping a connection alive cannot hold the only
        # thread (werkzeug picks HTTP/1.0 for unthreaded servers too, unless a class says otherwise).
        protocol_version = "HTTP/1.0"

        def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
            pass

    app = _with_raw_messages_route(DomainDispatcherApplication(create_backend_app))
    server = make_server(host, port, app, threaded=False, processes=1, request_handler=Handler)

    def exit_now(signum: int, frame: FrameType | None) -> NoReturn:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, exit_now)
    signal.signal(signal.SIGINT, exit_now)
    if exit_with_parent:
        threading.Thread(target=_exit_at_stdin_eof, daemon=True).start()
    print(f"moto server (single-threaded) listening on http://{host}:{port}", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()


class _RawMessageLog:
    """Every raw message SES accepted, in the order this route first saw it, append-only, so that
    `start` offsets stay valid however many SES backends (accounts, regions) receive mail. Each call
    copies only what is new (moto's backends keep their `sent_messages` lists append-only too);
    moto's reset empties it."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self._seen: dict[int, int] = {}  # id(backend) -> how many of its messages are in the log
        self.tags: dict[str, list[tuple[str, str]]] = {}  # message id -> its SendEmail tags

    def reset(self) -> None:
        self.messages.clear()
        self._seen.clear()
        self.tags.clear()

    def since(self, start: int) -> list[dict[str, Any]]:
        from moto.ses.models import RawMessage, ses_backends

        for account_backends in list(ses_backends.values()):
            for backend in list(account_backends.values()):
                sent = backend.sent_messages
                seen = self._seen.get(id(backend), 0)
                for message in sent[seen:]:
                    if isinstance(message, RawMessage):
                        self.messages.append(
                            {
                                "id": message.id,
                                "source": message.source,
                                "destinations": list(message.destinations),
                                "raw_data": message.raw_data,
                                "tags": self.tags.pop(message.id, []),
                            }
                        )
                self._seen[id(backend)] = len(sent)
        return self.messages[start:]


def _with_raw_messages_route(app: WsgiApp) -> WsgiApp:
    """Adds GET /_local/ses/raw-messages?start=N in front of moto's own routes."""
    log = _RawMessageLog()

    def route(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO")
        if path == "/moto-api/reset":
            log.reset()
        if path == SEND_EMAIL_V2_PATH and environ.get("REQUEST_METHOD") == "POST":
            return _send_email_keeping_tags(app, environ, start_response, log)
        if path != RAW_MESSAGES_PATH:
            return app(environ, start_response)
        query = urllib.parse.parse_qs(environ.get("QUERY_STRING", ""))
        start = query.get("start", ["0"])[0]
        body = json.dumps({"messages": log.since(int(start) if start.isdigit() else 0)}).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]

    return route


SEND_EMAIL_V2_PATH = "/v2/email/outbound-emails"


def _send_email_keeping_tags(
    app: WsgiApp, environ: dict[str, Any], start_response: Callable[..., Any], log: _RawMessageLog
) -> Iterable[bytes]:
    """SES v2 SendEmail through moto, its EmailTags and ConfigurationSetName kept by message id."""
    length = int(environ.get("CONTENT_LENGTH") or 0)
    request = environ["wsgi.input"].read(length) if length else b""
    environ["wsgi.input"] = io.BytesIO(request)
    reply = b"".join(app(environ, start_response))
    try:
        sent, params = json.loads(reply), json.loads(request)
        tags = [(str(tag["Name"]), str(tag["Value"])) for tag in params.get("EmailTags") or []]
        if params.get("ConfigurationSetName"):
            tags.append(("ses:configuration-set", str(params["ConfigurationSetName"])))
        log.tags[str(sent["MessageId"])] = tags
    except (ValueError, KeyError, TypeError):  # an error reply, or no JSON: nothing was sent
        pass
    return [reply]


def _exit_at_stdin_eof() -> None:
    # Raw reads: a daemon thread blocked inside sys.stdin's buffered reader holds its lock, and
    # the interpreter then aborts at shutdown (SIGABRT after a second) instead of exiting.
    while os.read(sys.stdin.fileno(), 4096):  # b"" only once the parent closed the pipe or died
        pass
    os._exit(0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Single-threaded moto server: every request is atomic.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5005)
    parser.add_argument("--exit-with-parent", action="store_true", help="exit at EOF on stdin (EmbeddedAws)")
    args = parser.parse_args(argv)
    serve(args.host, args.port, exit_with_parent=args.exit_with_parent)


if __name__ == "__main__":
    main()
