"""`make test`'s pytest: `python -m tests.run <pytest arguments>` runs pytest, then ends the process
with pytest's exit code without the interpreter's finalization.

Why: once in a while (one CI run in about ten, after every test had passed) CPython 3.11 crashed
with SIGSEGV while tearing itself down after a long run, which made `make` fail a green suite. Its
finalization is where such crashes live (threads started by libraries waking during teardown:
cpython#87135, fixed only in 3.14), and a test process has nothing left to do there: the embedded
AWS and render workers are child processes that exit when their stdin pipe closes with us.
faulthandler is on for the whole run, so a crash *during* the tests still prints every thread's
traceback and fails the run."""

from __future__ import annotations

import faulthandler
import os
import sys

import pytest


def main(argv: list[str]) -> int:
    faulthandler.enable()
    code = int(pytest.main(argv))
    sys.stdout.flush()
    sys.stderr.flush()
    return code


if __name__ == "__main__":
    os._exit(main(sys.argv[1:]))
