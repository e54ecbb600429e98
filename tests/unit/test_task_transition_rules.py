"""Task status moves without AWS: the transition table, which statuses carry the `active` index and
which moves are announced to dispatchers, and the update a move builds (core.task_transitions)."""

from __future__ import annotations

from typing import Any

import pytest
from pynamodb.expressions.update import Action, RemoveAction, SetAction

from core import task_transitions
from core.states import ANNOUNCED, DISPATCHABLE, TASK_TRANSITIONS, TaskStatus, can_move, sources_of
from core.storage.models import TaskModel
from core.task_transitions import active_sort, allowed_sources, announce, task_move

S = TaskStatus

# Every move a module makes today: (who, source, target). The table must allow each of them.
MOVES_IN_USE = [
    ("planner: finish", S.PLANNING, S.QUEUED),
    ("planner: finish, due later", S.PLANNING, S.SCHEDULED),
    ("planner / API: reject", S.PLANNING, S.REJECTED),
    ("dispatcher: first record", S.QUEUED, S.SENDING),
    ("dispatcher: first record of a due task", S.SCHEDULED, S.SENDING),
    ("dispatcher / unsubscribe: complete", S.QUEUED, S.COMPLETED),
    ("dispatcher / unsubscribe: complete", S.SENDING, S.COMPLETED),
    ("unsubscribe: every subtask suppressed before its time", S.SCHEDULED, S.COMPLETED),
    ("pause", S.SCHEDULED, S.PAUSED),
    ("pause", S.QUEUED, S.PAUSED),
    ("pause", S.SENDING, S.PAUSED),
    ("resume", S.PAUSED, S.QUEUED),
    ("resume", S.PAUSED, S.SCHEDULED),
    ("planner: finish with no service available", S.PLANNING, S.WAITING),
    ("failover: no service of the user available", S.QUEUED, S.WAITING),
    ("failover: no service of the user available", S.SENDING, S.WAITING),
    ("dispatcher: first record after waiting", S.WAITING, S.SENDING),
    ("retry-failed", S.COMPLETED, S.QUEUED),
    *[
        ("cancel", source, S.CANCELLED)
        for source in (S.PLANNING, S.SCHEDULED, S.QUEUED, S.SENDING, S.WAITING, S.PAUSED)
    ],
]


def written(actions: list[Action]) -> dict[str, Any]:
    """Attribute path -> the value set, or None when the action removes it."""
    result: dict[str, Any] = {}
    for action in actions:
        path = str(action.values[0])
        if isinstance(action, SetAction):
            (value,) = action.values[1].value.values()
            result[path] = value
        else:
            assert isinstance(action, RemoveAction), action
            result[path] = None
    return result


def test_every_status_has_a_row_and_terminal_statuses_go_nowhere() -> None:
    assert set(TASK_TRANSITIONS) == set(TaskStatus)
    assert [s for s, targets in TASK_TRANSITIONS.items() if not targets] == [S.CANCELLED, S.REJECTED]
    assert TASK_TRANSITIONS[S.COMPLETED] == {S.QUEUED}  # only retry-failed reopens a task


@pytest.mark.parametrize(("who", "source", "target"), MOVES_IN_USE)
def test_every_move_in_use_is_in_the_table(who: str, source: TaskStatus, target: TaskStatus) -> None:
    assert can_move(source, target), who
    assert source in sources_of(target)


@pytest.mark.parametrize(
    ("source", "target"),
    [
        (S.COMPLETED, S.SENDING),
        (S.CANCELLED, S.CANCELLED),
        (S.PAUSED, S.COMPLETED),
        (S.PAUSED, S.SENDING),  # a late record of a paused task's send must not restart it
        (S.PLANNING, S.SENDING),
    ],
)
def test_moves_the_table_refuses(source: TaskStatus, target: TaskStatus) -> None:
    assert not can_move(source, target)


def test_a_stored_status_as_text_is_looked_up_and_an_unknown_one_allows_nothing() -> None:
    assert can_move("queued", S.PAUSED)
    assert not can_move("archived", S.CANCELLED)


def test_sources_can_be_narrowed_but_never_widened_past_the_table() -> None:
    assert set(allowed_sources(S.CANCELLED)) == {
        S.PLANNING,
        S.SCHEDULED,
        S.QUEUED,
        S.SENDING,
        S.WAITING,
        S.PAUSED,
        S.EXPIRED,
    }
    assert allowed_sources(S.QUEUED, [S.PAUSED]) == [S.PAUSED]
    with pytest.raises(ValueError, match="no move"):
        allowed_sources(S.QUEUED, [S.CANCELLED])
    with pytest.raises(ValueError):
        allowed_sources(S.QUEUED, [])


def test_which_statuses_are_active_and_which_arrivals_are_announced() -> None:
    assert {S.SCHEDULED, S.QUEUED, S.SENDING, S.WAITING} == DISPATCHABLE
    assert {S.SCHEDULED, S.QUEUED, S.PAUSED, S.CANCELLED, S.EXPIRED} == ANNOUNCED
    # A dispatcher's own moves and rejections from planning need no announcement.
    assert not ANNOUNCED & {S.SENDING, S.WAITING, S.COMPLETED, S.REJECTED, S.PLANNING}


@pytest.mark.parametrize("target", sorted(DISPATCHABLE))
def test_a_move_to_a_dispatchable_status_puts_the_task_in_the_active_index(target: TaskStatus) -> None:
    source = sources_of(target)[0]
    move = task_move(TaskModel("task_1", user_id="alice"), target, 100.0, sources=[source])

    assert written(move.actions) == {
        "status": target,
        "active_partition": "active",
        "active_sort": "alice#task_1",
        "updated_at": "100.0",
    }
    assert active_sort("alice", "task_1") == "alice#task_1"


@pytest.mark.parametrize(
    ("target", "partition"),
    [
        (S.PAUSED, "held"),
        (S.COMPLETED, "done#1970-01-01"),
        (S.CANCELLED, "done#1970-01-01"),
        (S.REJECTED, "done#1970-01-01"),
    ],
)
def test_a_move_to_any_other_status_takes_the_task_out_of_the_active_partition(
    target: TaskStatus, partition: str
) -> None:
    move = task_move(TaskModel("task_1"), target, 100.0, reason="why")  # no user_id needed: the sort key stays

    assert written(move.actions) == {
        "status": target,
        "reason": "why",
        "active_partition": partition,
        "updated_at": "100.0",
    }
    with_user = task_move(TaskModel("task_1", user_id="alice"), target, 100.0)
    assert written(with_user.actions)["active_sort"] == "alice#task_1"


def test_a_task_back_in_planning_leaves_the_index() -> None:
    assert task_transitions.index_partition(S.PLANNING, 100.0) is None


def test_a_move_to_an_active_status_without_the_user_id_is_refused_before_any_write() -> None:
    with pytest.raises(ValueError, match="user_id"):
        task_move(TaskModel("task_1"), S.QUEUED, 100.0)


def test_the_condition_names_the_allowed_sources_and_the_callers_own_condition() -> None:
    move = task_move(
        TaskModel("task_1", user_id="alice"),
        S.QUEUED,
        100.0,
        sources=[S.PAUSED],
        actions=[TaskModel.planner_lease_until.set(0)],
        condition=TaskModel.quota_reserved.exists(),
    )

    assert (
        str(move.condition)
        == "(status IN ({'S': <TaskStatus.PAUSED: 'paused'>}) AND attribute_exists (quota_reserved))"
    )
    assert written(move.actions)["planner_lease_until"] == "0"


@pytest.mark.parametrize("target", list(TaskStatus))
def test_announce_tells_dispatchers_only_about_announced_targets(
    monkeypatch: pytest.MonkeyPatch, target: TaskStatus
) -> None:
    calls: list[None] = []
    monkeypatch.setattr(task_transitions, "control_changed", lambda: calls.append(None))

    announce(target)

    assert len(calls) == (1 if target in ANNOUNCED else 0)
