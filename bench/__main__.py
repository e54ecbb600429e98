"""`make bench`: every benchmark, one table, and bench/results.json.

    .venv/bin/python -m bench [--quick] [--only dispatch,cost,...] [--output bench/results.json]

Each benchmark is a module of this package exposing `measure(quick: bool = False) -> dict` with at
least `name`, its figures, `target` and `met` (and, for the table, `rows`: measure, figure,
target, met). Each runs in a child process of its own (`python -m bench --child NAME`): the
benchmarks start embedded AWS servers and local runners, point boto3 at them through the
environment and keep warm clients in module state, which must not leak from one to the next. A
benchmark whose module is missing is reported as not run; one that fails is reported with its
error, and the others still run.

results.json holds the environment of the last run and, per benchmark, its figures with when, at
which commit and whether quick they were measured; `--only` replaces just the benchmarks it names.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results.json"
PRIOR_RESULTS_VARIABLE = "BENCH_PRIOR_RESULTS"  # bench.harness.prior_result reads it

# Name -> module, in running order (cost prices the runs dispatch measured, so it comes after).
REGISTRY: dict[str, str] = {
    "dispatch": "bench.dispatch",
    "dispatch_latency": "bench.dispatch_latency",
    "continuity": "bench.continuity",
    "plan": "bench.plan",
    "fairness": "bench.fairness",
    "pick": "bench.pick",
    "pacing": "bench.pacing",
    "cost": "bench.cost",
    "contact_import": "bench.contact_import",
    "csv_import": "bench.csv_import",
}
CHILD_TIMEOUT_SECONDS = 20 * 60


# ---------------------------------------------------------------- one benchmark (child process)


def run_child(name: str, quick: bool, result_path: Path) -> int:
    """Imports the benchmark's module and writes what its measure() returns (or why it could not)."""
    module_name = REGISTRY[name]
    started = time.monotonic()
    result: dict[str, Any]
    try:
        module = importlib.import_module(module_name)
        result = {"status": "ok", **module.measure(quick=quick)}
    except ModuleNotFoundError as error:
        if error.name != module_name:
            traceback.print_exc()
        reason = f"{module_name} is missing" if error.name == module_name else f"{type(error).__name__}: {error}"
        result = {"name": name, "status": "not run" if error.name == module_name else "error", "reason": reason}
    except Exception as error:
        traceback.print_exc()
        result = {"name": name, "status": "error", "error": f"{type(error).__name__}: {error}"[:2000]}
    result["seconds"] = round(time.monotonic() - started, 1)
    result_path.write_text(json.dumps(result, indent=2, default=str))
    return 0


def run_in_child(name: str, quick: bool, prior: Path) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-") as folder:
        result_path = Path(folder) / "result.json"
        command = [sys.executable, "-m", "bench", "--child", name, "--result", str(result_path)]
        if quick:
            command.append("--quick")
        environment = {**os.environ, PRIOR_RESULTS_VARIABLE: str(prior)}
        started = time.monotonic()
        try:
            completed = subprocess.run(  # noqa: S603 - our own module
                command, cwd=REPO_ROOT, env=environment, timeout=CHILD_TIMEOUT_SECONDS, check=False
            )
        except subprocess.TimeoutExpired:
            return {"name": name, "status": "error", "error": f"timed out after {CHILD_TIMEOUT_SECONDS} s"}
        if result_path.exists():
            result: dict[str, Any] = json.loads(result_path.read_text())
            return result
        return {
            "name": name,
            "status": "error",
            "error": f"the child process exited with code {completed.returncode} without a result",
            "seconds": round(time.monotonic() - started, 1),
        }


# ---------------------------------------------------------------- environment


def _git(*arguments: str, strip: bool = True) -> str:
    try:
        completed = subprocess.run(  # noqa: S603 - fixed arguments
            ["git", *arguments],  # noqa: S607 - git from PATH
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return completed.stdout.strip() if strip else completed.stdout


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment(quick: bool) -> dict[str, Any]:
    """What the figures depend on besides the code: the machine, the libraries, the commit."""
    # Porcelain lines are "XY path": two status letters, a space, the path.
    changed = [line[3:] for line in _git("status", "--porcelain", strip=False).splitlines() if line[3:]]
    outside_bench = [path for path in changed if not path.startswith(("bench/", "docs/"))]
    try:
        usable_cpus: int | None = len(os.sched_getaffinity(0))
    except AttributeError:
        usable_cpus = os.cpu_count()
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "quick": quick,
        "git_commit": _git("rev-parse", "HEAD") or None,
        "git_uncommitted_outside_bench": outside_bench,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "usable_cpus": usable_cpus,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "packages": {name: _version(name) for name in ("moto", "boto3", "botocore", "pynamodb", "werkzeug")},
    }


# ---------------------------------------------------------------- the table


def table_rows(result: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(measure, figure, target, met?) lines for one benchmark's result."""
    name = str(result.get("name", "?"))
    status = result.get("status", "ok")
    if status != "ok":
        return [(name, str(result.get("reason") or result.get("error") or status), "", status.upper())]
    rows = result.get("rows")
    if isinstance(rows, list) and rows:
        return [(f"{name}: {r['measure']}", str(r["figure"]), str(r["target"]), _met(r.get("met"))) for r in rows]
    # A benchmark without rows: one line per target with its figure under the same key (which way
    # the target points is the benchmark's to say), then whether it met them all.
    target = result.get("target")
    if isinstance(target, dict) and target:
        lines = [(f"{name}: {key}", str(result.get(key, "?")), str(value), "-") for key, value in target.items()]
        return [*lines, (f"{name}: every target", "", "", _met(result.get("met")))]
    return [(name, "", str(target or ""), _met(result.get("met")))]


def _met(value: Any) -> str:
    return {True: "yes", False: "NO", None: "-"}.get(value, str(value))


def print_table(results: dict[str, dict[str, Any]]) -> None:
    lines = [("measure", "figure", "target", "met?")]
    for result in results.values():
        lines.extend(table_rows(result))
    widths = [min(90, max(len(line[column]) for line in lines)) for column in range(3)]
    for index, (measure, figure, target, met) in enumerate(lines):
        print(f"{measure:<{widths[0]}}  {figure:<{widths[1]}}  {target:<{widths[2]}}  {met}")
        if index == 0:
            print("-" * (sum(widths) + 12))


# ---------------------------------------------------------------- main


def selected(only: str | None) -> list[str]:
    if not only:
        return list(REGISTRY)
    names = [name.strip() for name in only.split(",") if name.strip()]
    unknown = [name for name in names if name not in REGISTRY]
    if unknown:
        raise SystemExit(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(REGISTRY)}")
    return [name for name in REGISTRY if name in names]  # registry order: cost after dispatch


def merged(output: Path, run: dict[str, Any], results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The results file with this run's benchmarks replaced and the others kept as they were."""
    previous: dict[str, Any] = {}
    if output.exists():
        try:
            previous = json.loads(output.read_text())
        except ValueError:
            previous = {}
    benchmarks = dict(previous.get("benchmarks", {}))
    benchmarks.update(results)
    ordered = {name: benchmarks[name] for name in [*REGISTRY, *sorted(benchmarks)] if name in benchmarks}
    return {"environment": run, "benchmarks": ordered}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller runs (minutes, not a quarter hour)")
    parser.add_argument("--only", help="comma-separated benchmark names: " + ", ".join(REGISTRY))
    parser.add_argument("--output", type=Path, default=RESULTS, help="results file (default bench/results.json)")
    parser.add_argument("--child", choices=list(REGISTRY), help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return run_child(args.child, args.quick, args.result)

    names = selected(args.only)
    run = environment(args.quick)
    results: dict[str, dict[str, Any]] = {}
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-") as folder:
        prior = Path(folder) / "prior.json"
        for name in names:
            prior.write_text(json.dumps(results, default=str))
            print(f"==> {name}", file=sys.stderr, flush=True)
            result = run_in_child(name, args.quick, prior)
            result.update(measured_at=run["date"], git_commit=run["git_commit"], quick=args.quick)
            results[name] = result
            print(f"==> {name}: {result.get('status')} in {result.get('seconds', '?')} s", file=sys.stderr, flush=True)
    run["seconds"] = round(time.monotonic() - started, 1)
    args.output.write_text(json.dumps(merged(args.output, run, results), indent=2, default=str) + "\n")
    print()
    print_table(results)
    print(f"\n{len(results)} benchmark(s) in {run['seconds']:.0f} s; figures in {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
