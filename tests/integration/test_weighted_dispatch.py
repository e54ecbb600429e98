"""Weighted fairness and task priority through the real dispatcher on in-process moto with an
injected clock: the order SES got the emails in keeps the bound of docs/fairness.md across
invocations (the pointer, with the picks left in a turn, is saved at each release), a VIP's small
urgent task goes first within the VIP's share and takes nothing from the other users, and a weight
changed through the API reaches a sending dispatcher within a second."""

from __future__ import annotations

from collections import Counter

import pytest

from core.clock import iso
from core.settings import Settings
from core.storage.models import SchedulerStateModel, SubtaskModel, TaskModel, UserModel
from tests.conftest import ApiClient, FakeClock
from tests.support.dispatching import World, plan_now, sent_subtasks, start_scheduler
from tests.support.fairness_bound import window_deviation
from tests.support.planning import seed_contacts, seed_task

RATE = 0.01  # 100 emails/s on the fake clock: only the order matters here


@pytest.fixture
def world(aws: Settings, clock: FakeClock) -> World:
    start_scheduler(clock.now())
    return World(aws, clock)


def weigh(user_id: str, weight: int) -> None:
    UserModel(user_id).update(actions=[UserModel.weight.set(weight)])


def campaign(world: World, user_id: str, recipients: int, *, priority: str | None = None) -> str:
    """A planned task of `user_id` (who already has a campaign) with its own contacts."""
    now = world.clock.now()
    tag = f"list{len(world.tasks[user_id])}"
    seed_contacts(user_id, recipients, now, tags=[tag], start=10_000 * len(world.tasks[user_id]))
    task = seed_task(user_id, now, include=[tag])
    if priority is not None:
        task.update(actions=[TaskModel.priority.set(priority)])
    plan_now(task.task_id, world.settings, world.clock)
    world.tasks[user_id].append(task.task_id)
    return task.task_id


def users_in_send_order() -> list[str]:
    return [str(s.user_id) for s in sent_subtasks()]


def assert_within_bound(order: list[str], weights: dict[str, int]) -> None:
    total = sum(weights.values())
    for user, weight in weights.items():
        deviation = window_deviation(order, user, weight, total)
        assert deviation.within, (user, deviation)


def test_weights_3_1_1_hold_the_bound_over_every_run_of_sends_across_invocations(
    world: World, clock: FakeClock
) -> None:
    # Given a VIP of weight 3 and two users of weight 1, each with more queued than will be sent
    world.service("svc", sending_rate=RATE)
    weights = {"vip": 3, "ann": 1, "ben": 1}
    for user, weight in weights.items():
        world.campaign(user, 150 * weight, ["svc"])
        weigh(user, weight)

    # When the dispatcher runs five short invocations, each taking over the saved pointer
    states = []
    for _ in range(5):
        report = world.tick("svc", budget=1.23)  # about 123 sends: invocations end mid-turn
        assert report.sent > 100
        states.append(SchedulerStateModel.get("service#svc", consistent_read=True))
        clock.advance(1.0)

    # Then, in the order SES got them, every window of sends is within each user's bound
    order = users_in_send_order()
    assert len(order) > 500 and not [s for s in SubtaskModel.scan() if s.status == "unknown"]
    assert_within_bound(order, weights)
    # and it is exactly the rounds ann, ben, vip x3 from one invocation to the next, though some
    # ended mid-turn: the picks left in the turn were saved with the pointer and taken by the next
    assert order == (["ann", "ben", "vip", "vip", "vip"] * len(order))[: len(order)]
    assert any(int(state.pointer_turn or 0) > 0 for state in states)


def test_a_vip_urgent_task_goes_first_within_its_share_and_the_others_keep_theirs(
    world: World, clock: FakeClock
) -> None:
    # Given the VIP (3) sending a bulk campaign, and ann and ben (1) theirs
    world.service("svc", sending_rate=RATE)
    weights = {"vip": 3, "ann": 1, "ben": 1}
    for user, weight in weights.items():
        world.campaign(user, 150 * weight, ["svc"])
        weigh(user, weight)
    bulk = world.tasks["vip"][0]
    TaskModel(bulk).update(actions=[TaskModel.priority.set("bulk")])
    urgent: list[str] = []
    sent = Counter[str]()

    def vip_sends_urgent_news(point: str, subtask: SubtaskModel) -> None:
        # After 100 sends (in the dispatcher's own loop) the VIP queues a small urgent task
        sent[point] += 1
        if point == "after_send" and sent[point] == 100:
            urgent.append(campaign(world, "vip", 20, priority="urgent"))

    # When the dispatcher sends for four seconds of pace
    world.tick("svc", budget=4.0, fault=vip_sends_urgent_news)

    sends = sent_subtasks()
    order = [str(s.user_id) for s in sends]
    assert urgent and len(order) > 350
    # Then the users' order keeps the 3:1:1 bound before, while and after the urgent task sends
    assert_within_bound(order, weights)
    # and the urgent emails went out in the VIP's turns, before any more of its bulk ones
    first_urgent = next(i for i, s in enumerate(sends) if s.task_id == urgent[0])
    vip_after = [s.task_id for s in sends[first_urgent:] if s.user_id == "vip"]
    assert vip_after[:20] == [urgent[0]] * 20 and set(vip_after[20:]) == {bulk}
    # and while they did, ann and ben each got exactly their one in five
    while_urgent = order[first_urgent : first_urgent + (20 // 3 + 1) * 5]
    counts = Counter(while_urgent)
    assert abs(counts["ann"] - len(while_urgent) / 5) < 1 and abs(counts["ben"] - len(while_urgent) / 5) < 1


def test_a_weight_changed_through_the_api_reaches_a_sending_dispatcher_within_a_second(
    world: World, api: ApiClient, clock: FakeClock
) -> None:
    # Given three users of weight 1 sending at 20 emails a second
    world.service("svc", sending_rate=0.05)
    for user in ("ann", "ben", "vip"):
        world.campaign(user, 200, ["svc"])
    changed_at: list[int] = []
    sent = Counter[str]()

    def admin_raises_vip(point: str, subtask: SubtaskModel) -> None:
        sent[point] += 1
        if point == "after_send" and sent[point] == 30:
            reply = api.patch("/api/users/vip", {"weight": 3})
            assert reply.status == 200 and reply.body["weight"] == 3
            changed_at.append(sent[point])

    # When an administrator makes vip weigh 3 while the dispatcher sends
    world.tick("svc", budget=10.0, fault=admin_raises_vip)

    order = users_in_send_order()
    before, after = order[: changed_at[0]], order[changed_at[0] + 20 :]  # 20 sends: a second of pace
    # Then before it, one each per round; from a second after it, 3:1:1
    assert_within_bound(before, {"ann": 1, "ben": 1, "vip": 1})
    assert len(after) > 100
    assert_within_bound(after, {"ann": 1, "ben": 1, "vip": 3})


def test_stats_estimate_shares_a_service_by_weight_and_a_users_share_by_priority(
    world: World, api: ApiClient, clock: FakeClock
) -> None:
    # Given one service sending 1 email/s, the VIP (3) with an urgent task of 30 and a normal one
    # of 60, and ann (1) with a normal task of 40
    world.service("svc", sending_rate=1.0)
    vip_normal = world.campaign("vip", 60, ["svc"])
    weigh("vip", 3)
    vip_urgent = campaign(world, "vip", 30, priority="urgent")
    ann = world.campaign("ann", 40, ["svc"])

    stats = {task["task_id"]: task for task in api.get("/api/scheduler/stats").body["tasks"]}

    # Then the VIP's 3/4 of the pace goes to its urgent task first (30 at 0.75/s), then to its
    # normal one (90 at 0.75/s); ann's 1/4 carries its 40 in 160 s
    now = clock.now()
    assert stats[vip_urgent]["estimated_finish"] == iso(now + 40)
    assert stats[vip_normal]["estimated_finish"] == iso(now + 120)
    assert stats[ann]["estimated_finish"] == iso(now + 160)
