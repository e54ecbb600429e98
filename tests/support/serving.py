"""`make serve` as the end-to-end tests run it: `python -m local_runner serve` in a process group of
its own, its output read as it comes (a full pipe would block it), and the URLs its banner prints."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

REPO_ROOT = Path(__file__).resolve().parents[2]


def until(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    """Polls `condition` every 0.25 s until it is truthy; its value, or AssertionError at `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.25)


def _drain(stream: IO[str], lines: list[str]) -> None:
    for line in stream:
        lines.append(line)


class Serving:
    def __init__(self, process: subprocess.Popen[str], lines: list[str]) -> None:
        self.process = process
        self.lines = lines

    def banner(self, *labels: str, timeout: float = 90.0) -> list[str]:
        """The URL printed after each label (`API`, `AWS`, `Dashboard`), once all are printed."""

        def printed() -> list[str] | None:
            output = "".join(self.lines)
            assert self.process.poll() is None, f"the runner exited:\n{output}"
            found = [re.search(rf"{label}\s+(http://\S+)", output) for label in labels]
            return [match.group(1) for match in found if match] if all(found) else None

        urls: list[str] = until(printed, timeout, f"the runner's banner ({', '.join(labels)})")
        return urls


@contextmanager
def serve(outbox: Path) -> Iterator[Serving]:
    """The local runner on a free port until the block ends (then killed with its whole group)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("AWS_")}
    process = subprocess.Popen(  # noqa: S603 - our own module
        [sys.executable, "-m", "local_runner", "serve", "--port", "0", "--outbox", str(outbox)],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    assert process.stdout is not None
    lines: list[str] = []
    threading.Thread(target=_drain, args=(process.stdout, lines), daemon=True).start()
    try:
        yield Serving(process, lines)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
