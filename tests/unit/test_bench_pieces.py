"""The benchmarks' pure pieces (no server, nothing timed): fairness and pace arithmetic, DynamoDB
item sizes and request units, the cost model, the results table and bench/results.json's shape."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from bench import __main__ as bench_main
from bench.continuity import window_figures
from bench.cost import PRICES, LambdaConfig, Usage, cost_per_thousand, dispatcher_config, function_for
from bench.fairness import first_positions, window_counts
from bench.harness import (
    IndexSpec,
    Send,
    TableSpec,
    gaps,
    item_size,
    jain_index,
    max_in_window,
    number_size,
    percentile,
    table_specs,
    write_units,
)

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results.json"


# ---------------------------------------------------------------- fairness and pace


def test_jain_index_is_one_for_equal_shares_and_one_over_n_when_one_party_gets_everything() -> None:
    assert jain_index([20.0] * 10) == pytest.approx(1.0)
    assert jain_index([200.0] + [0.0] * 9) == pytest.approx(0.1)
    assert jain_index([1.0, 3.0]) == pytest.approx(16 / 20)


def test_the_fairness_window_ends_with_the_send_that_empties_the_first_queue() -> None:
    # Given a big user and two small ones with two emails each, sent round robin then big alone
    user_of = {"t-big": "big", "t-a": "a", "t-b": "b"}
    order = ["t-big", "t-a", "t-b", "t-big", "t-a", "t-b", "t-big", "t-big"]
    sends = [Send(float(index), task, "") for index, task in enumerate(order)]

    # When the window is cut where user "a" ran out of work
    counts, length = window_counts(sends, user_of, {"big": 10, "a": 2, "b": 2})

    # Then it holds the first five sends, and everyone's first send is among the first three
    assert length == 5
    assert counts == {"big": 2, "a": 2, "b": 1}
    assert first_positions(sends, user_of) == {"big": 1, "a": 2, "b": 3}


def test_gaps_percentiles_and_bursts() -> None:
    times = [0.0, 0.2, 0.4, 2.0, 2.2]
    assert gaps(times) == pytest.approx([0.2, 0.2, 1.6, 0.2])
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.99) == 4.0
    assert max_in_window(times, 1.0) == 3
    assert max_in_window(times, 0.2) == 1  # half-open: a send exactly one window later is the next window


def test_continuity_window_reports_pace_and_every_gap_above_the_bound() -> None:
    # Given sends every 0.2 s for 50 s, nothing for 10 s, then again every 0.2 s
    sent = [index * 0.2 for index in range(250)] + [60 + index * 0.2 for index in range(100)]

    figures = window_figures(sent, window=70.0, interval=0.2)

    assert figures["sends"] == 300
    assert figures["fraction"] == pytest.approx(300 * 0.2 / 70, abs=1e-4)
    assert figures["gap_bound_seconds"] == pytest.approx(1.4)
    assert [gap["after_seconds"] for gap in figures["gaps_above_bound"]] == [49.8]
    assert figures["max_sends_in_10_s"] <= figures["allowed_sends_in_10_s"] == 51


# ---------------------------------------------------------------- DynamoDB item sizes and request units


def test_item_size_follows_dynamodbs_rules() -> None:
    assert number_size("0") == 2
    assert number_size("12345") == 4  # three bytes for five digits, plus one
    assert number_size("-1.50") == 3
    item = {
        "pk": {"S": "abc"},  # 2 + 3
        "n": {"N": "7"},  # 1 + 2
        "ok": {"BOOL": True},  # 2 + 1
        "m": {"M": {"k": {"S": "v"}}},  # 1 + (3 + 1 + 1 + 1)
        "l": {"L": [{"S": "xy"}]},  # 1 + (3 + 1 + 2)
    }
    assert item_size(item) == 5 + 3 + 3 + 7 + 7


SUBTASKS = TableSpec(
    "Subtasks",
    ("partition", "contact_id"),
    (
        IndexSpec("queue", ("queue_key", "contact_id"), "ALL"),
        IndexSpec("inflight", ("inflight_key", "contact_id"), "INCLUDE", ("task_id", "claim_owner")),
    ),
)


def _subtask(**attributes: str) -> dict[str, Any]:
    return {"partition": {"S": "t#00"}, "contact_id": {"S": "c1"}, **{k: {"S": v} for k, v in attributes.items()}}


def test_a_claim_writes_the_item_removes_it_from_one_index_and_adds_it_to_another() -> None:
    queued = _subtask(status="queued", queue_key="svc#t")
    claimed = _subtask(status="sending", inflight_key="svc", claim_owner="me")

    table, indexes = write_units(SUBTASKS, queued, claimed)

    assert (table, indexes) == (1, {"queue": 1, "inflight": 1})


def test_an_index_is_written_only_when_its_entry_changes() -> None:
    before = _subtask(status="sending", inflight_key="svc", claim_owner="me", error="")
    after = _subtask(status="sending", inflight_key="svc", claim_owner="me", error="late")  # not projected

    assert write_units(SUBTASKS, before, after) == (1, {})
    moved = _subtask(status="sending", inflight_key="other", claim_owner="me", error="")
    assert write_units(SUBTASKS, before, moved) == (1, {"inflight": 2})  # delete and put


def test_write_units_round_up_per_kilobyte_and_count_the_larger_image() -> None:
    big = _subtask(body="x" * 3000, queue_key="svc#t")

    table, indexes = write_units(SUBTASKS, big, None)

    assert table == 3
    assert indexes == {"queue": 3}


def test_table_specs_come_from_the_template() -> None:
    specs = table_specs()
    assert {index.name for index in specs["SubtasksTable"].indexes} == {"queue", "by-message"}
    assert specs["TasksTable"].keys == ("task_id",)


# ---------------------------------------------------------------- the cost model


def test_cost_per_thousand_emails_adds_up_its_parts() -> None:
    usage = Usage(
        emails=1000,
        write_units=8000,
        read_units=400,
        invocations=2,
        invocation_seconds=[30.0, 30.0],
        requests_by_service={"dynamodb": 2000, "sesv2": 1000, "sqs": 10},
    )

    cost = cost_per_thousand(usage, LambdaConfig(memory_mb=1024, architecture="x86_64"))

    assert cost.dynamodb_writes == pytest.approx(8000 * 0.625 / 1e6)
    assert cost.dynamodb_reads == pytest.approx(400 * 0.125 / 1e6)
    assert cost.lambda_duration == pytest.approx(60 * 1.0 * PRICES.lambda_per_gb_second_x86_64)
    assert cost.lambda_duration_arm64 == pytest.approx(60 * PRICES.lambda_per_gb_second_arm64)
    assert usage.schedule_fires == 1
    assert cost.lambda_requests == pytest.approx(2 * 0.20 / 1e6)
    assert cost.scheduler == pytest.approx(1.0 / 1e6)
    assert cost.sqs == pytest.approx(10 * 0.40 / 1e6)
    parts = [getattr(cost, name) for name in ("dynamodb_writes", "dynamodb_reads", "lambda_duration")]
    assert cost.total == pytest.approx(sum(parts) + cost.lambda_requests + cost.scheduler + cost.sqs)


def test_a_slow_pace_pays_for_the_lambda_time_spent_waiting() -> None:
    # One email a second: a 50 s invocation sends 50 emails at 1 GB
    usage = Usage(50, 0, 0, 1, [50.0], {})

    cost = cost_per_thousand(usage, LambdaConfig(1024, "x86_64"))

    assert cost.lambda_duration == pytest.approx(1000 * PRICES.lambda_per_gb_second_x86_64)  # ~ $0.0167


def test_the_dispatchers_memory_and_architecture_come_from_the_template() -> None:
    template: dict[str, Any] = {
        "Globals": {"Function": {"MemorySize": 512, "Architectures": ["x86_64"]}},
        "Resources": {"DispatcherFunction": {"Properties": {"MemorySize": 1024, "Architectures": ["arm64"]}}},
    }
    assert dispatcher_config(template) == LambdaConfig(1024, "arm64")
    del template["Resources"]["DispatcherFunction"]["Properties"]["Architectures"]
    assert dispatcher_config(template) == LambdaConfig(1024, "x86_64")
    assert dispatcher_config().memory_mb > 0  # the real template.yaml


# ---------------------------------------------------------------- the table and results.json


def test_table_rows_for_rows_targets_and_benchmarks_not_run() -> None:
    with_rows = {"name": "pacing", "rows": [{"measure": "m", "figure": "1", "target": "<= 2", "met": True}]}
    plan_like = {"name": "plan", "ratio": 0.36, "target": {"ratio": 0.8}, "met": False}
    missing = {"name": "plan", "status": "not run", "reason": "bench.plan is missing"}

    assert bench_main.table_rows(with_rows) == [("pacing: m", "1", "<= 2", "yes")]
    assert bench_main.table_rows(plan_like) == [
        ("plan: ratio", "0.36", "0.8", "-"),
        ("plan: every target", "", "", "NO"),
    ]
    assert bench_main.table_rows(missing)[0][3] == "NOT RUN"


def test_only_keeps_the_registry_order_and_refuses_unknown_names() -> None:
    assert bench_main.selected("cost,dispatch") == ["dispatch", "cost"]
    with pytest.raises(SystemExit):
        bench_main.selected("dispatch,nope")


def test_a_partial_run_keeps_the_other_benchmarks_results(tmp_path: Path) -> None:
    output = tmp_path / "results.json"
    output.write_text(json.dumps({"environment": {}, "benchmarks": {"plan": {"name": "plan", "met": True}}}))

    merged = bench_main.merged(output, {"date": "now"}, {"dispatch": {"name": "dispatch", "met": False}})

    assert list(merged["benchmarks"]) == ["dispatch", "plan"]
    assert merged["environment"] == {"date": "now"}


def test_results_json_has_the_environment_and_every_benchmark() -> None:
    # bench/results.json is committed: the latest figures the README and docs/performance.md quote
    results = json.loads(RESULTS.read_text())
    environment = results["environment"]
    for key in ("date", "quick", "git_commit", "python", "platform", "cpu_count", "packages"):
        assert key in environment
    assert {"moto", "boto3"} <= set(environment["packages"])
    assert set(results["benchmarks"]) <= set(bench_main.REGISTRY)
    for name, result in results["benchmarks"].items():
        assert result["name"] == name
        assert result.get("status", "ok") in ("ok", "not run", "error")
        if result.get("status", "ok") == "ok":
            assert "target" in result and "met" in result
            for line in result.get("rows", []):
                assert set(line) == {"measure", "figure", "target", "met"}
                assert not (isinstance(line["figure"], float) and math.isnan(line["figure"]))


def test_each_pace_is_priced_on_the_dispatcher_function_of_its_tier() -> None:
    assert function_for(0.0001) == "DispatcherFunction"
    assert function_for(0.05) == "DispatcherFunction"
    assert function_for(0.1) == "PacedDispatcherFunction"
    assert function_for(1.0) == "PacedDispatcherFunction"
    paced = dispatcher_config(function="PacedDispatcherFunction")
    assert paced.memory_mb < dispatcher_config().memory_mb  # the real template.yaml
