"""Round robin (core.dispatch.fairness) without AWS: users in turn from the saved pointer, one pick
per user per round, a user's tasks in turn, users with nothing ready skipped without losing their
place."""

from __future__ import annotations

from core.dispatch.fairness import Fairness, Pointer, TaskWork
from core.storage.models import SenderModel, TaskModel


def work(user: str, task: str) -> TaskWork:
    return TaskWork(task=TaskModel(task, user_id=user), template={}, sender=SenderModel(user, "snd"))


def picks(fairness: Fairness, count: int, ready: set[str] | None = None) -> list[str]:
    chosen = []
    for _ in range(count):
        picked = fairness.next_work(lambda w: ready is None or w.task.task_id in ready)
        chosen.append(picked.task.task_id if picked else "-")
    return chosen


def test_users_take_turns_and_a_users_tasks_take_turns_within_its_share() -> None:
    fairness = Fairness(Pointer())
    works = [work("ann", "a1"), work("ann", "a2"), work("ben", "b1"), work("cat", "c1")]
    fairness.replace_tasks({w.task.task_id: w for w in works})
    assert picks(fairness, 6) == ["a1", "b1", "c1", "a2", "b1", "c1"]


def test_the_saved_pointer_resumes_where_the_last_holder_stopped() -> None:
    fairness = Fairness(Pointer(user="ben", tasks={"ann": "a1"}))
    fairness.replace_tasks({w.task.task_id: w for w in [work("ann", "a1"), work("ann", "a2"), work("ben", "b1")]})
    assert picks(fairness, 3) == ["a2", "b1", "a1"]
    assert fairness.pointer == Pointer(user="ann", tasks={"ann": "a1", "ben": "b1"})


def test_a_user_with_nothing_ready_is_skipped_and_nothing_ready_at_all_is_none() -> None:
    fairness = Fairness(Pointer())
    fairness.replace_tasks({w.task.task_id: w for w in [work("ann", "a1"), work("ben", "b1"), work("cat", "c1")]})
    assert picks(fairness, 4, ready={"a1", "c1"}) == ["a1", "c1", "a1", "c1"]
    assert picks(fairness, 1, ready=set()) == ["-"]
