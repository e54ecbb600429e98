"""`make invoke` (python -m local_runner invoke): every sample in events/ runs through its function's
handler against an embedded AWS, as `sam local invoke -e` would run it against a real one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from local_runner.moto_server import EmbeddedAws

REPO_ROOT = Path(__file__).resolve().parents[2]
EVENTS = REPO_ROOT / "events"
# Which function each sample is for, by its file-name prefix.
FUNCTION_BY_PREFIX = {
    "api": "ApiFunction",
    "planner": "PlannerFunction",
    "dispatcher": "DispatcherFunction",
    "health": "HealthFunction",
    "events": "EventsFunction",
}


def invoke(function: str, event: Path, *extra: str) -> tuple[int, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("AWS_")}
    done = subprocess.run(  # noqa: S603 - our own module
        [sys.executable, "-m", "local_runner", "invoke", function, str(event), *extra],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done.returncode, done.stdout


def result_of(stdout: str) -> Any:
    """The handler's result: all of stdout (the function's logs go to stderr)."""
    return json.loads(stdout)


def test_every_sample_event_names_a_function() -> None:
    samples = sorted(EVENTS.glob("*.json"))
    assert samples
    assert all(path.name.split("_", 1)[0] in FUNCTION_BY_PREFIX for path in samples)
    assert set(FUNCTION_BY_PREFIX.values()) <= {
        FUNCTION_BY_PREFIX[path.name.split("_", 1)[0]] for path in samples
    }  # at least one sample per function


# What each sample does against an empty account: the API answers, the planner skips the unknown
# task, the dispatcher finds no such service, the health check has nothing to check.
EXPECTED = {
    "api_create_user.json": lambda result: result["statusCode"] == 201,
    "api_list_services.json": lambda result: (
        result["statusCode"] == 200 and json.loads(result["body"]) == {"services": []}
    ),
    # alice has no user record on a fresh embedded AWS: she may create nothing
    "api_create_task.json": lambda result: result["statusCode"] == 403,
    "planner_plan_task.json": lambda result: result == {"batchItemFailures": []},
    "dispatcher_tick.json": lambda result: result["stop_reason"] == "service_unavailable",
    # no service to check yet; the run is recorded on the scheduler item
    "health_check.json": lambda result: result["checked"] == 0 and result["errors"] == [],
    # no subtask has these message ids yet: the campaign events wait (their messages fail), the
    # malformed last one is dropped
    "events_ses_notifications.json": lambda result: len(result["batchItemFailures"]) == 16,
}


@pytest.mark.parametrize("sample", sorted(EXPECTED))
def test_sample_event_runs_through_its_handler(sample: str) -> None:
    function = FUNCTION_BY_PREFIX[sample.split("_", 1)[0]]
    code, stdout = invoke(function, EVENTS / sample)
    assert code == 0, stdout
    assert EXPECTED[sample](result_of(stdout)), stdout


def test_every_sample_is_covered() -> None:
    assert sorted(EXPECTED) == sorted(path.name for path in EVENTS.glob("*.json"))


def test_invoke_against_a_running_embedded_aws_keeps_its_state() -> None:
    with EmbeddedAws() as aws:
        first = invoke("ApiFunction", EVENTS / "api_create_user.json", "--endpoint", aws.endpoint_url)
        second = invoke("ApiFunction", EVENTS / "api_create_user.json", "--endpoint", aws.endpoint_url)
    assert first[0] == 0 and result_of(first[1])["statusCode"] == 201
    assert second[0] == 0 and result_of(second[1])["statusCode"] == 409  # the user exists already


def test_invoke_names_the_functions_when_given_an_unknown_one() -> None:
    code, _ = invoke("NoSuchFunction", EVENTS / "api_create_user.json")
    assert code == 2
