"""Weighted round robin and task priority (core.dispatch.fairness) without AWS: the bound of
docs/fairness.md over every window of long runs, users joining and leaving, the pointer saved and
restored mid-turn, and priority ordering a user's own share only."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.dispatch.fairness import Fairness, Pointer, TaskWork
from core.storage.models import SenderModel, TaskModel
from tests.support.fairness_bound import brute_force_deviation, prefix_deviation, window_deviation


def work(user: str, task: str, priority: str | None = None) -> TaskWork:
    return TaskWork(task=TaskModel(task, user_id=user, priority=priority), template={}, sender=SenderModel(user, "snd"))


def fairness_of(works: list[TaskWork], weights: dict[str, int], pointer: Pointer | None = None) -> Fairness:
    fairness = Fairness(pointer or Pointer())
    fairness.replace_tasks({w.task.task_id: w for w in works}, weights)
    return fairness


def picks(fairness: Fairness, count: int, ready: object = None) -> list[TaskWork | None]:
    """`count` picks; `ready` is None (everything ready), a set of task ids, or a callable."""
    chosen = []
    for _ in range(count):
        if ready is None:
            chosen.append(fairness.next_work(lambda w: True))
        elif callable(ready):
            chosen.append(fairness.next_work(ready))
        else:
            chosen.append(fairness.next_work(lambda w: w.task.task_id in ready))  # type: ignore[operator]
    return chosen


def users_of(chosen: list[TaskWork | None]) -> list[str]:
    return [w.task.user_id if w else "-" for w in chosen]


def tasks_of(chosen: list[TaskWork | None]) -> list[str]:
    return [w.task.task_id if w else "-" for w in chosen]


# ---------------------------------------------------------------- the bound, 3:1:1


def test_weights_3_1_1_keep_every_window_of_5000_picks_within_the_bound() -> None:
    # Given a VIP of weight 3 and two users of weight 1, each with plenty queued
    weights = {"vip": 3, "ann": 1, "ben": 1}
    fairness = fairness_of([work("vip", "v1"), work("ann", "a1"), work("ben", "b1")], weights)

    # When 5,000 picks are made
    run = users_of(picks(fairness, 5000))

    # Then each user got exactly its share of the whole run, and a round is vip x3, ann, ben
    assert Counter(run) == {"vip": 3000, "ann": 1000, "ben": 1000}
    assert run[:10] == ["ann", "ben", "vip", "vip", "vip"] * 2
    # and in every window (every start, every length) and every prefix each user's count is within
    # w_i * (1 - w_i/W) of n * w_i/W: 1.2 for the VIP, 0.8 for the others
    for user, weight in weights.items():
        windows = window_deviation(run, user, weight, 5)
        assert windows.within, (user, windows)
        assert prefix_deviation(run, user, weight, 5).within
        # and the bound is tight: some window reaches it (it cannot be stated smaller)
        assert windows.most_over == windows.allowed == windows.most_under


def test_the_window_check_agrees_with_checking_each_window_and_catches_an_unfair_run() -> None:
    rng = random.Random(12)
    for _ in range(30):
        run = [rng.choice("abc") for _ in range(rng.randint(1, 60))]
        assert window_deviation(run, "a", 3, 5) == brute_force_deviation(run, "a", 3, 5)
    # Plain round robin (one pick each) is outside the 3:1:1 bound for the VIP
    assert not window_deviation(["vip", "ann", "ben"] * 100, "vip", 3, 5).within


# ---------------------------------------------------------------- the bound, any weights


weights_strategy = st.dictionaries(
    st.sampled_from(["u1", "u2", "u3", "u4", "u5", "u6"]), st.integers(1, 7), min_size=1, max_size=6
)


@settings(max_examples=150, deadline=None)
@given(weights=weights_strategy, start=st.integers(0, 5), turn_left=st.integers(0, 6))
def test_with_every_user_backlogged_every_window_is_within_the_bound(
    weights: dict[str, int], start: int, turn_left: int
) -> None:
    # Given users of any weights, all with work, resuming from any saved position mid-turn
    users = sorted(weights)
    current = users[start % len(users)]
    pointer = Pointer(user=current, turn_left=min(turn_left, weights[current] - 1))
    fairness = fairness_of([work(user, f"{user}-t") for user in users], weights, pointer)
    total = sum(weights.values())

    run = users_of(picks(fairness, 40 * total))

    for user in users:
        assert window_deviation(run, user, weights[user], total).within, user


@settings(max_examples=150, deadline=None)
@given(weights=weights_strategy, seed=st.integers(0, 2**32))
def test_a_backlogged_user_keeps_its_lower_bound_whatever_the_others_have_ready(
    weights: dict[str, int], seed: int
) -> None:
    # Given one user always ready and every other user ready only now and then
    users = sorted(weights)
    steady = users[seed % len(users)]
    rng = random.Random(seed)
    fairness = fairness_of([work(user, f"{user}-t") for user in users], weights)
    total = sum(weights.values())

    run = users_of(picks(fairness, 30 * total, lambda w: w.task.user_id == steady or rng.random() < 0.6))

    # Then the steady user never falls more than w(1 - w/W) below its share (W: every user's weight)
    assert window_deviation(run, steady, weights[steady], total).most_under <= weights[steady] * (
        total - weights[steady]
    )


@settings(max_examples=150, deadline=None)
@given(weights=weights_strategy, seed=st.integers(0, 2**32))
def test_a_user_never_exceeds_its_upper_bound_while_the_others_are_backlogged(
    weights: dict[str, int], seed: int
) -> None:
    # Given every user always ready but one, which is ready only now and then
    users = sorted(weights)
    fickle = users[seed % len(users)]
    rng = random.Random(seed)
    fairness = fairness_of([work(user, f"{user}-t") for user in users], weights)
    total = sum(weights.values())

    run = users_of(picks(fairness, 30 * total, lambda w: w.task.user_id != fickle or rng.random() < 0.5))

    # Then the fickle user never gets more than w(1 - w/W) above its share, in any window
    assert window_deviation(run, fickle, weights[fickle], total).most_over <= weights[fickle] * (
        total - weights[fickle]
    )


# ---------------------------------------------------------------- users joining and leaving


def test_a_user_joining_gets_its_first_pick_within_one_round_and_then_its_share() -> None:
    # Given vip (3) and ann (1) sending
    weights = {"vip": 3, "ann": 1, "cat": 2}
    works = [work("vip", "v1"), work("ann", "a1")]
    fairness = fairness_of(works, weights)
    picks(fairness, 6)  # ann, vip x3, ann, vip (mid-turn)

    # When cat (2) joins
    fairness.replace_tasks({w.task.task_id: w for w in [*works, work("cat", "c1")]}, weights)
    run = users_of(picks(fairness, 600))

    # Then cat's first pick comes within the others' weights (4 picks), and from then on every
    # window is within the bound of W = 6
    assert run.index("cat") < 4
    after = run[run.index("cat") :]
    for user, weight in weights.items():
        assert window_deviation(after, user, weight, 6).within, user


def test_a_user_leaving_lets_the_others_share_its_picks_by_their_weights() -> None:
    # Given vip (3), ann (1) and ben (1), and ben's queue empties after 20 picks
    weights = {"vip": 3, "ann": 1, "ben": 1}
    fairness = fairness_of([work("vip", "v1"), work("ann", "a1"), work("ben", "b1")], weights)
    first = users_of(picks(fairness, 20))
    rest = users_of(picks(fairness, 400, lambda w: w.task.user_id != "ben"))

    # Then before, 3:1:1; after, 3:1 within the bound of W = 4, ben never picked
    assert Counter(first) == {"vip": 12, "ann": 4, "ben": 4}
    assert "ben" not in rest
    assert window_deviation(rest, "vip", 3, 4).within and window_deviation(rest, "ann", 1, 4).within


def test_a_user_with_nothing_ready_ends_its_turn_early_and_the_next_user_goes() -> None:
    fairness = fairness_of([work("vip", "v1"), work("vip", "v2"), work("ann", "a1")], {"vip": 3})
    ready = {"v1", "v2", "a1"}
    assert tasks_of(picks(fairness, 2, ready)) == ["a1", "v1"]
    # vip's turn has two picks left, but none of its tasks is ready: ann's turn begins
    assert tasks_of(picks(fairness, 1, {"a1"})) == ["a1"]
    assert tasks_of(picks(fairness, 4, ready)) == ["v2", "v1", "v2", "a1"]


def test_a_weight_lowered_mid_turn_shortens_the_turn_in_progress() -> None:
    works = [work("vip", "v1"), work("ann", "a1")]
    fairness = fairness_of(works, {"vip": 5})
    assert users_of(picks(fairness, 3)) == ["ann", "vip", "vip"]  # vip has 3 picks left
    fairness.replace_tasks({w.task.task_id: w for w in works}, {"vip": 2})
    # at most new weight - 1 more picks in the turn in progress, then turns of 2
    assert users_of(picks(fairness, 6)) == ["vip", "ann", "vip", "vip", "ann", "vip"]


# ---------------------------------------------------------------- the pointer across invocations


@settings(max_examples=100, deadline=None)
@given(
    weights=weights_strategy,
    cuts=st.lists(st.integers(1, 30), min_size=1, max_size=12),
    seed=st.integers(0, 2**32),
)
def test_a_pointer_saved_and_restored_mid_turn_continues_the_same_sequence(
    weights: dict[str, int], cuts: list[int], seed: int
) -> None:
    # Given users with two tasks each, one of them urgent for some users, and some readiness pattern
    rng = random.Random(seed)
    works = [
        work(user, f"{user}-{n}", rng.choice([None, "urgent", "bulk"])) for user in sorted(weights) for n in (1, 2)
    ]
    readiness = [{w.task.task_id for w in works if rng.random() < 0.7} for _ in range(sum(cuts))]

    def ready_at(index: int) -> object:
        return lambda w: w.task.task_id in readiness[index]

    # When one Fairness makes every pick
    whole = fairness_of(works, weights)
    uninterrupted = [tasks_of([whole.next_work(ready_at(i))])[0] for i in range(sum(cuts))]

    # and, instead, each invocation of `cut` picks starts from what the previous one saved
    # (user, picks left in its turn, per-user task), as lease.release saves it
    resumed: list[str] = []
    saved = Pointer()
    for cut in cuts:
        invocation = fairness_of(works, weights, Pointer(saved.user, dict(saved.tasks), saved.turn_left))
        for _ in range(cut):
            resumed += tasks_of([invocation.next_work(ready_at(len(resumed)))])
        saved = invocation.pointer

    # Then the sequences are the same
    assert resumed == uninterrupted


# ---------------------------------------------------------------- priority


def test_within_a_users_share_urgent_goes_first_then_normal_then_bulk() -> None:
    works = [
        work("vip", "v-bulk", "bulk"),
        work("vip", "v-normal"),
        work("vip", "v-urgent", "urgent"),
        work("ann", "a1", "bulk"),
    ]
    fairness = fairness_of(works, {"vip": 2})
    everything = {"v-bulk", "v-normal", "v-urgent", "a1"}
    # vip's picks go to its urgent task while it has work; ann's lone bulk task keeps ann's turns
    assert tasks_of(picks(fairness, 6, everything)) == ["a1", "v-urgent", "v-urgent"] * 2
    # the urgent task done: normal; then bulk
    assert tasks_of(picks(fairness, 3, everything - {"v-urgent"})) == ["a1", "v-normal", "v-normal"]
    assert tasks_of(picks(fairness, 3, {"v-bulk", "a1"})) == ["a1", "v-bulk", "v-bulk"]


def test_tasks_of_the_same_priority_take_turns_and_one_not_ready_keeps_its_place() -> None:
    works = [work("vip", "u1", "urgent"), work("vip", "u2", "urgent"), work("vip", "n1")]
    fairness = fairness_of(works, {"vip": 3})
    assert tasks_of(picks(fairness, 4)) == ["u1", "u2", "u1", "u2"]
    # u1 waits (e.g. a domain limit): u2 goes on; the normal task gets a pick only when no urgent is ready
    assert tasks_of(picks(fairness, 2, {"u2", "n1"})) == ["u2", "u2"]
    assert tasks_of(picks(fairness, 1, {"n1"})) == ["n1"]
    # u1 ready again: the rotation resumes after u2, the last urgent task served
    assert tasks_of(picks(fairness, 3)) == ["u1", "u2", "u1"]


def test_an_urgent_task_takes_nothing_from_other_users() -> None:
    # Given vip (3) with a bulk campaign, ann and ben (1 each)
    weights = {"vip": 3, "ann": 1, "ben": 1}
    base = [work("vip", "v-bulk", "bulk"), work("ann", "a1"), work("ben", "b1")]
    urgent_left = 10

    def ready(w: TaskWork) -> bool:
        return w.task.task_id != "v-urgent" or urgent_left > 0

    # When vip also has a small urgent task of 10 emails
    with_urgent = fairness_of([*base, work("vip", "v-urgent", "urgent")], weights)
    run = []
    for _ in range(500):
        picked = with_urgent.next_work(ready)
        assert picked is not None
        if picked.task.task_id == "v-urgent":
            urgent_left -= 1
        run.append(picked)
    without = users_of(picks(fairness_of(base, weights), 500))

    # Then the order of users is exactly the same as without it: the urgent emails came out of vip's turns
    assert users_of(run) == without
    # and they were vip's first 10 picks, before any of its bulk ones
    vip_tasks = [w.task.task_id for w in run if w and w.task.user_id == "vip"]
    assert vip_tasks[:10] == ["v-urgent"] * 10 and set(vip_tasks[10:]) == {"v-bulk"}


@pytest.mark.parametrize("weights", [{}, {"ann": 1, "ben": 1, "cat": 1}])
def test_with_every_weight_1_the_order_is_the_plain_round_robin(weights: dict[str, int]) -> None:
    works = [work("ann", "a1"), work("ann", "a2"), work("ben", "b1"), work("cat", "c1")]
    fairness = fairness_of(works, weights)
    assert tasks_of(picks(fairness, 6)) == ["a1", "b1", "c1", "a2", "b1", "c1"]
    assert fairness.pointer == Pointer(user="cat", tasks={"ann": "a2", "ben": "b1", "cat": "c1"}, turn_left=0)
