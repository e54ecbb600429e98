"""Where renders run: a long-lived worker process that the caller kills when a render is late.

Why a process. The sandbox (core.mail.sandbox) bounds operations and sizes, and checks the deadline
between operations, but one operation can run for seconds inside a single call: `urlize` on a
megabyte takes 2.2 s, `wordwrap(3)` 11 s, `split()|sort` 1.6 s (measured, Python 3.11). Nothing
inside the process can stop such a call on time: `signal.alarm` works on the main thread only (the
local runner renders on many), and an exception injected into the rendering thread
(`PyThreadState_SetAsyncExc`) is not delivered while a C call holds the GIL (`sort`) and can land
after the render has already returned. Capping every costly filter's input is a list that is never
complete. A separate process can always be stopped: SIGKILL.

How it is used, and what it costs (measured on the shared 2-core development box at load 4-5,
Python 3.11, a 5 KB template whose in-process render takes ~0.2 ms of CPU):
- One worker per concurrent caller, kept between renders (the dispatcher renders serially on its
  main thread: one worker; the API in Lambda: one; the local runner's threads: a few). Starting
  one per render would cost its start-up every time: 75-150 ms until its first render.
- A render is one request (length-prefixed pickle) and one reply; a template's sources cross the
  pipe once and stay compiled in the worker, by key. Per email this adds 0.1-0.25 ms of wall clock
  and ~0.13 ms of CPU (both processes) to the in-process render. A batch (render_many: the
  dispatcher's claimed emails of one template) is one request and one reply per email, read
  together: in the dispatcher, whose SES threads take the GIL at each of the loop's system calls,
  one round trip per email cost ~1 ms of the loop's wall clock.
- The worker checks the deadline between operations (core.mail.sandbox) and answers "timeout" itself,
  so a template of many slow steps costs the budget (+5 ms) and no restart. A single slow call is
  cut by the caller: it waits for the budget plus GRACE_SECONDS, then kills the worker (SIGKILL),
  in all 260-280 ms for a 200 ms budget. The replacement starts at once (Popen: under 10 ms of the
  caller's time) and boots while the caller does other work; after a first kill a spare is kept
  started, so a stream of late templates (one task's recipients) does not wait for start-ups.
- Compiling a template (Jinja2: ~11 ms per KB of dense expressions) is charged to COMPILE_SECONDS,
  not to the per-email budget: it happens once per template per worker, and saving a template
  compiles it under the same limit, so a template that saves compiles in time at send too (short
  of a much busier machine).
- multiprocessing is not used: Pool and Queue need /dev/shm, which Lambda does not have, and fork
  in a threaded process (the local runner) is unsafe. subprocess and pipes work everywhere.

No worker outlives its parent: a thread of the worker waits for the parent's end of the requests
pipe to close (it closes when the parent exits, however it exits) and ends the worker then, even
mid-render; the worker starts in its own session (the terminal's Ctrl-C reaches only the parent,
which then exits); and it sets itself a CPU-time ceiling per request, the last resort should one C
call hold the GIL for long after its parent died. It also limits its own address space, so a template
that allocates gigabytes fails its render instead of exhausting the function's memory.

Replies are plain frames (tag, length, UTF-8), never unpickled by the parent: whatever runs in the
worker cannot make the parent execute anything. Which part a killed worker was on is read from one
byte both processes map, so that naming it costs no message."""

from __future__ import annotations

import atexit
import contextlib
import math
import mmap
import os
import pickle
import resource
import select
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import OrderedDict
from typing import Any

from jinja2 import Template

from core.errors import InvalidInput
from core.mail.sandbox import (
    MAX_RENDERED_CHARS,
    RenderBudgetExceeded,
    RenderError,
    RenderTimeout,
    compile_part,
    render_part,
)

FIELDS = ("subject", "html", "text")
Sources = tuple[str, str, str | None]
Rendered = list[str] | InvalidInput  # one context's parts, or the error its render raised

GRACE_SECONDS = 0.05  # past the budget before the kill: the worker's own deadline check comes first
COMPILE_SECONDS = 1.0  # compiling one template (all its parts), once per worker
START_SECONDS = 10.0  # a new worker's start-up; not charged to any render
MEMORY_LIMIT_BYTES = 256 * 1024 * 1024  # the worker's address space (~25 MB at rest)
CPU_MARGIN_SECONDS = 5  # a worker whose parent died mid-render stops after this much more CPU
TEMPLATES_PER_WORKER = 16  # compiled templates kept in a worker (a large one compiles to ~20 MB)
IDLE_WORKERS = 4  # kept for later callers; more are stopped when their caller is done

_HEADER = struct.Struct("<cI")  # reply frame: tag, payload length
_LENGTH = struct.Struct("<I")  # request: pickle length
_READY, _COMPILED, _PARTS, _UNKNOWN, _ERROR = b"R", b"C", b"P", b"U", b"E"
_MAX_FRAME = len(FIELDS) * (4 * MAX_RENDERED_CHARS + _LENGTH.size)  # every part's UTF-8 at most
_KINDS: dict[str, type[InvalidInput]] = {
    "timeout": RenderTimeout,
    "budget": RenderBudgetExceeded,
    "render": RenderError,
    "invalid": InvalidInput,
}


# ---------------------------------------------------------------- the worker process


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _read_exact(fd: int, size: int) -> bytes | None:
    """`size` bytes, or None at EOF (the parent is gone)."""
    chunks: list[bytes] = []
    while size:
        chunk = os.read(fd, min(size, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _reply(fd: int, tag: bytes, payload: bytes = b"") -> None:
    _write_all(fd, _HEADER.pack(tag, len(payload)) + payload)


def _kind(error: InvalidInput) -> str:
    for kind, kind_class in _KINDS.items():  # most specific first
        if isinstance(error, kind_class):
            return kind
    return "invalid"


def _limit_cpu(seconds: float) -> None:
    """The next request may use this much more CPU time: SIGXCPU ends the worker past it."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    soft = math.ceil(usage.ru_utime + usage.ru_stime + seconds) + CPU_MARGIN_SECONDS
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


def serve(requests: int, replies: int, progress: mmap.mmap) -> None:
    """The worker's loop: one request at a time until EOF. A request is
    `(key, sources or None, contexts, budget seconds, sample)`; the reply is COMPILED when sources
    came (the budgets start after it), then for each context in turn PARTS (each part
    length-prefixed) or ERROR (kind, field, reason); or one ERROR for the whole request when the
    template does not compile; or UNKNOWN when the key has no compiled template here (the parent
    then sends the sources). Each context has its own budget, from the start of its render.
    `progress[0]` says which part is being compiled or rendered, for a parent that has to kill the
    worker and name the part. A `sample` render (the check on save) lets missing variables render
    empty and goes on to the next part after an error that is not a budget's, so that it finds
    whatever part is over a budget."""
    compiled: OrderedDict[int, list[tuple[int, Template]]] = OrderedDict()
    _reply(replies, _READY)
    while True:
        header = _read_exact(requests, _LENGTH.size)
        body = _read_exact(requests, _LENGTH.unpack(header)[0]) if header else None
        if body is None:
            return
        index = 0
        try:
            key, sources, contexts, budget, sample = pickle.loads(body)  # noqa: S301 - from our own parent
            _limit_cpu(COMPILE_SECONDS + budget * len(contexts))
            parts = compiled.get(key)
            if parts is None and sources is None:
                _reply(replies, _UNKNOWN)
                continue
            if parts is None:
                parts = []
                for index, source in enumerate(sources):
                    if source is not None:
                        progress[0] = index
                        parts.append((index, compile_part(FIELDS[index], source, sample=sample)))
                compiled[key] = parts
                while len(compiled) > TEMPLATES_PER_WORKER:
                    compiled.popitem(last=False)
                _reply(replies, _COMPILED)
            compiled.move_to_end(key)
        except Exception as error:  # MemoryError too
            _reply_error(replies, error, index, compiled)
            continue
        for context in contexts:
            _render_one(replies, parts, context, budget, sample, progress, compiled)


def _render_one(
    replies: int,
    parts: list[tuple[int, Template]],
    context: dict[str, Any],
    budget: float,
    sample: bool,
    progress: mmap.mmap,
    compiled: OrderedDict[int, list[tuple[int, Template]]],
) -> None:
    """One context's PARTS or ERROR frame."""
    index = 0
    try:
        deadline = time.monotonic() + budget
        rendered: list[bytes] = []
        for index, template in parts:
            progress[0] = index
            try:
                text = render_part(FIELDS[index], template, context, deadline).encode("utf-8", "surrogatepass")
            except RenderError as error:
                if not sample or isinstance(error, RenderBudgetExceeded):
                    raise
                text = b""  # what the sample lacks stops this part: the next parts are checked still
            rendered += [_LENGTH.pack(len(text)), text]
        _reply(replies, _PARTS, b"".join(rendered))  # one write: one wake-up of the parent
    except Exception as error:  # MemoryError too
        _reply_error(replies, error, index, compiled)


def _reply_error(
    replies: int, error: BaseException, index: int, compiled: OrderedDict[int, list[tuple[int, Template]]]
) -> None:
    if isinstance(error, InvalidInput):
        reason = error.details[0]["reason"] if error.details else error.message
        _reply(replies, _ERROR, f"{_kind(error)}\0{FIELDS[index]}\0{reason}".encode("utf-8", "replace"))
    elif isinstance(error, MemoryError):
        compiled.clear()  # what is cached may be what filled the memory
        _reply(replies, _ERROR, f"budget\0{FIELDS[index]}\0template needs too much memory".encode())
    else:  # the sandbox catches a template's errors: this would be ours
        message = f"render\0{FIELDS[index]}\0{type(error).__name__}: {error}"[:500]
        _reply(replies, _ERROR, message.encode("utf-8", "replace"))


def _exit_with_parent(requests: int) -> None:
    """Ends the worker as soon as the parent's end of the requests closes, even mid-render (within
    the switch interval, or after the C call that holds the GIL)."""
    watcher = select.poll()
    watcher.register(requests, 0)  # no data events: a hang-up is always reported
    while not watcher.poll():
        pass
    os._exit(0)


def main() -> None:
    """`python -m core.mail.render_worker MEMORY_LIMIT_BYTES PROGRESS_FD`, started by Worker."""
    replies = os.dup(1)
    os.dup2(2, 1)  # a stray print goes to stderr, never into the replies
    threading.Thread(target=_exit_with_parent, args=(0,), name="exit-with-parent", daemon=True).start()
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # SIGXCPU would dump core otherwise
    limit, progress_fd = int(sys.argv[1]), int(sys.argv[2])
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard == resource.RLIM_INFINITY or limit < hard:
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    with contextlib.suppress(BrokenPipeError):  # the parent is gone, or closed us before we were ready
        serve(0, replies, mmap.mmap(progress_fd, 1))


# ---------------------------------------------------------------- the parent's side


class RenderWorkerFailed(RuntimeError):
    """A worker could not be started: an environment problem, not the template's fault."""


class WorkerGone(Exception):
    """The worker had exited before it got the request; another worker can take it."""


class _Late(Exception):
    pass


class _Gone(Exception):
    pass


class Worker:
    """One worker process and the parent's view of it. Used by one thread at a time."""

    def __init__(self, memory_limit: int = MEMORY_LIMIT_BYTES) -> None:
        # One byte both processes map: which part the worker is on, read when it has to be killed.
        self._progress_file = tempfile.TemporaryFile()  # noqa: SIM115 - closed with the worker
        self._progress_file.write(b"\0")
        self._progress_file.flush()
        self._progress = mmap.mmap(self._progress_file.fileno(), 1)
        path = os.pathsep.join(entry for entry in sys.path if entry)
        self.process = subprocess.Popen(  # noqa: S603 - our own module, no shell
            [
                sys.executable,
                "-P",
                "-m",
                "core.mail.render_worker",
                str(memory_limit),
                str(self._progress_file.fileno()),
            ],
            stdin=subprocess.PIPE,  # its EOF ends the worker, even if we die without close()
            stdout=subprocess.PIPE,
            bufsize=0,
            pass_fds=(self._progress_file.fileno(),),
            env={**os.environ, "PYTHONPATH": path},
            start_new_session=True,  # Ctrl-C reaches only us; our exit ends the worker
        )
        assert self.process.stdin is not None and self.process.stdout is not None
        self._requests = self.process.stdin.fileno()
        self._replies = self.process.stdout.fileno()
        self._poller = select.poll()
        self._poller.register(self._replies, select.POLLIN)
        self._buffer = bytearray()
        self._ready = False
        # (sources, sample) -> key: mirrors the worker's cache of compiled templates
        self._templates: OrderedDict[tuple[Sources, bool], int] = OrderedDict()
        self._next_key = 0
        self.usable = True  # False once killed or found dead: the pool replaces it
        self.died_idle = False  # found dead when given a request: not a late render's kill

    @property
    def pid(self) -> int:
        return self.process.pid

    def render(self, sources: Sources, context: dict[str, Any], budget: float, *, sample: bool = False) -> list[str]:
        """The parts of `sources` that are not None, rendered for `context` within `budget`
        seconds (plus GRACE_SECONDS). Raises RenderTimeout, RenderBudgetExceeded, RenderError or
        InvalidInput naming the part; WorkerGone when the worker had died before the request.
        `sample`: the check on save (see serve); a part the sample cannot render comes back empty."""
        return _only(self.render_many(sources, [context], budget, sample=sample))

    def render_many(
        self, sources: Sources, contexts: list[dict[str, Any]], budget: float, *, sample: bool = False
    ) -> list[Rendered]:
        """`render` for each context in turn, in one request: each one's parts, or the error
        `render` would have raised. Each render has its own budget (from the previous reply, as
        the worker starts the next render once it has replied). The results end at the first
        render that is late (RenderTimeout) or stops its worker: the worker is killed, and the
        contexts after it are left to the caller (to render one at a time, as before)."""
        if not contexts:
            return []  # nothing to ask: a request would leave a reply unread
        if not self._ready:
            self._await_ready()
        template = (sources, sample)
        key = self._templates.get(template)
        compiling = key is None
        self._progress[0] = 0
        if key is None:
            self._next_key += 1
            key = self._next_key
            self._send((key, sources, contexts, budget, sample))
        else:
            self._templates.move_to_end(template)
            self._send((key, None, contexts, budget, sample))
        count = sum(source is not None for source in sources)
        results: list[Rendered] = []
        try:
            if compiling:
                tag, payload = self._frame(time.monotonic() + COMPILE_SECONDS)
                if tag == _ERROR:  # it does not compile: not for any context
                    return [self._error(payload, budget) for _ in contexts]
                if tag != _COMPILED:
                    raise _Gone
                self._remember(template, key)
            for _ in contexts:
                tag, payload = self._frame(time.monotonic() + budget + GRACE_SECONDS)
                if tag == _UNKNOWN and not compiling and not results:  # the worker no longer has it: send it
                    del self._templates[template]
                    return self.render_many(sources, contexts, budget, sample=sample)
                if tag == _ERROR:
                    results.append(self._error(payload, budget))
                    if isinstance(results[-1], RenderTimeout) and len(results) < len(contexts):
                        self._kill_in()  # busy with the next, likely as slow: the caller goes one by one
                        return results
                elif tag == _PARTS:
                    results.append(_split_parts(payload, count))
                else:
                    raise _Gone
            return results
        except _Late:
            late = _timeout_reason(budget) if template in self._templates else _compile_reason()
            return [*results, RenderTimeout(self._kill_in(), late)]
        except _Gone:
            return [
                *results,
                RenderBudgetExceeded(self._kill_in(), "the render stopped its worker (memory or CPU limit)"),
            ]

    def _kill_in(self) -> str:
        """Kills the worker; the part it was on."""
        self.kill()
        index = self._progress[0]  # read once it is dead: it cannot move on any more
        self._progress.close()
        return FIELDS[index] if index < len(FIELDS) else "html"

    def _await_ready(self) -> None:
        try:
            self._expect(_READY, time.monotonic() + START_SECONDS, 0.0)
        except (_Late, _Gone) as error:
            self.kill()
            raise RenderWorkerFailed(f"render worker did not start within {START_SECONDS:g} s") from error
        self._ready = True

    def _remember(self, template: tuple[Sources, bool], key: int) -> None:
        self._templates[template] = key
        while len(self._templates) > TEMPLATES_PER_WORKER:
            self._templates.popitem(last=False)

    def _send(self, request: tuple[Any, ...]) -> None:
        body = pickle.dumps(request, protocol=pickle.HIGHEST_PROTOCOL)
        try:
            _write_all(self._requests, _LENGTH.pack(len(body)) + body)
        except OSError as error:  # it died while idle (BrokenPipeError): nothing was rendered
            self.died_idle = True
            self.kill()
            raise WorkerGone from error

    def _expect(self, expected: bytes, deadline: float, budget: float) -> None:
        tag, payload = self._frame(deadline)
        self._raise_error(tag, payload, budget)
        if tag != expected:
            raise _Gone

    @staticmethod
    def _raise_error(tag: bytes, payload: bytes, budget: float) -> None:
        if tag == _ERROR:
            raise Worker._error(payload, budget)

    @staticmethod
    def _error(payload: bytes, budget: float) -> InvalidInput:
        kind, field, reason = [*payload.decode("utf-8", "replace").split("\0", 2), "", ""][:3]
        error_class = _KINDS.get(kind, RenderError)
        if error_class is RenderTimeout:
            reason = _timeout_reason(budget)
        return error_class(field if field in FIELDS else "html", reason)

    def _frame(self, deadline: float) -> tuple[bytes, bytes]:
        """The next reply frame; _Late past the deadline, _Gone when the worker has exited."""
        while True:
            if len(self._buffer) >= _HEADER.size:
                tag, size = _HEADER.unpack_from(self._buffer)
                if size > _MAX_FRAME:
                    raise _Gone
                end = _HEADER.size + size
                if len(self._buffer) >= end:
                    payload = bytes(self._buffer[_HEADER.size : end])
                    del self._buffer[:end]
                    return tag, payload
            left = deadline - time.monotonic()
            if left <= 0:
                raise _Late
            if not self._poller.poll(math.ceil(left * 1000)):
                continue
            chunk = os.read(self._replies, 1 << 20)
            if not chunk:
                raise _Gone
            self._buffer += chunk

    def kill(self) -> None:
        """Stops the worker now (SIGKILL) and reaps it; idempotent."""
        self.usable = False
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self._close_pipes()

    def close(self, timeout: float = 1.0) -> None:
        """Lets an idle worker exit at EOF, killing it if it lingers; idempotent."""
        self.usable = False
        self._close_pipes()
        if not self._progress.closed:
            self._progress.close()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def _close_pipes(self) -> None:
        for pipe in (self.process.stdin, self.process.stdout, self._progress_file):
            if pipe is not None and not pipe.closed:
                pipe.close()


def _only(results: list[Rendered]) -> list[str]:
    """The one context's parts, or the error its render raised."""
    (result,) = results
    if isinstance(result, InvalidInput):
        raise result
    return result


def _split_parts(payload: bytes, count: int) -> list[str]:
    parts: list[str] = []
    offset = 0
    try:
        while offset < len(payload):
            (size,) = _LENGTH.unpack_from(payload, offset)
            offset += _LENGTH.size
            parts.append(payload[offset : offset + size].decode("utf-8", "surrogatepass"))
            offset += size
    except (struct.error, UnicodeDecodeError):
        raise _Gone from None  # not what a worker writes
    if len(parts) != count or offset != len(payload):
        raise _Gone
    return parts


def _timeout_reason(budget: float) -> str:
    return f"rendering takes longer than the {budget * 1000:g} ms render budget"


def _compile_reason() -> str:
    return f"compiling takes longer than {COMPILE_SECONDS:g} s"


class RenderWorkers:
    """Workers for every thread that renders: one each while it renders, at most IDLE_WORKERS kept
    between renders. A killed worker is replaced at once, and from then on a spare is kept started:
    where one template was late, the next is likely to be too (the same task, the next recipient),
    and the spare spares that render the wait for a new worker's start-up."""

    def __init__(self, memory_limit: int = MEMORY_LIMIT_BYTES, idle: int = IDLE_WORKERS) -> None:
        self.memory_limit = memory_limit
        self.idle_limit = idle
        self._idle: list[Worker] = []
        self._spare: Worker | None = None
        self._lock = threading.Lock()

    def render(self, sources: Sources, context: dict[str, Any], budget: float, *, sample: bool = False) -> list[str]:
        """See Worker.render. A worker found dead when given the request is replaced, once."""
        return _only(self.render_many(sources, [context], budget, sample=sample))

    def render_many(
        self, sources: Sources, contexts: list[dict[str, Any]], budget: float, *, sample: bool = False
    ) -> list[Rendered]:
        """See Worker.render_many: the contexts' results in one round trip, ending early at the
        first render that is late or stops its worker. A worker found dead when given the request
        is replaced, once."""
        try:
            return self._render_many_once(sources, contexts, budget, sample)
        except WorkerGone:
            return self._render_many_once(sources, contexts, budget, sample)

    def _render_many_once(
        self, sources: Sources, contexts: list[dict[str, Any]], budget: float, sample: bool
    ) -> list[Rendered]:
        worker = self._acquire()
        try:
            return worker.render_many(sources, contexts, budget, sample=sample)
        finally:
            self._release(worker)

    def _acquire(self) -> Worker:
        # An idle worker that died is found by its request (WorkerGone: the pipe is closed), not
        # by a waitpid here: each system call lets the sending threads take the GIL from the loop.
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return Worker(self.memory_limit)

    def _release(self, worker: Worker) -> None:
        if worker.died_idle:
            worker.kill()  # reaped; the retry takes another worker (no spare: nothing was late)
            return
        if not worker.usable:
            worker.kill()
            with self._lock:
                spare, self._spare = self._spare, Worker(self.memory_limit)
            if spare is None or spare.process.poll() is not None:
                if spare is not None:
                    spare.kill()  # the spare died waiting: reap it
                spare = Worker(self.memory_limit)
            worker = spare
        with self._lock:
            if len(self._idle) < self.idle_limit:
                self._idle.append(worker)
                return
        worker.close()

    def pids(self) -> list[int]:
        """The idle workers' process ids (for tests and diagnostics)."""
        with self._lock:
            return [worker.pid for worker in self._idle]

    def close(self) -> None:
        with self._lock:
            workers, self._idle = self._idle, []
            if self._spare is not None:
                workers.append(self._spare)
                self._spare = None
        for worker in workers:
            worker.close()


default_workers = RenderWorkers()
atexit.register(default_workers.close)


if __name__ == "__main__":
    main()
