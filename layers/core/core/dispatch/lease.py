"""One sending invocation per email service: the lease, its hand-off to a successor, wake-ups.

The lease is an item of the scheduler-state table (`service#<id>`) taken with a conditional write.
It lasts longer than the Lambda timeout of its holder, so an expired lease can only belong to a dead
invocation. A live holder gives it up in three ways (docs/dispatch.md has the whole story):

- hand-off: near its time budget, a holder with work left starts a successor (a wake-up message
  naming it as predecessor); the successor waits for exactly that release and takes the lease, so
  sending goes on at the stored pace with no gap (`await_release`);
- a stop for lack of work, which first checks that no wake-up arrived since its last look
  (`wake_seq`); a wake-up that finds the lease held bumps it (`note_wake`), so a holder about to stop
  looks once more instead of stranding new work until the next watchdog tick;
- any other stop (scheduler stopped, service disabled, daily quota), unconditionally.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pynamodb.expressions.update import Action

from core.clock import Clock
from core.storage.models import SchedulerStateModel, update_if

HANDOFF_POLL_SECONDS = 0.1  # how often a successor looks whether its predecessor has let go
HANDOFF_EARLY_SECONDS = 1.0  # a successor starts looking this long before its predecessor's deadline


def service_state_key(service_id: str) -> str:
    return f"service#{service_id}"


class Release(StrEnum):
    RELEASED = "released"
    WOKEN = "woken"  # a wake-up arrived since the holder's last look: it keeps the lease and looks again
    LOST = "lost"  # the lease expired and another invocation holds it: its state wins


@dataclass(frozen=True)
class Saved:
    """What a holder leaves for the next one."""

    pointer_user: str
    pointer_tasks: dict[str, str]
    last_send_at: float | None
    # Claim batches of the holder's in-flight journal that are fully recorded (core.dispatch.claims);
    # batches with a failed record stay, for the next holder to mark `unknown`.
    settled_batches: tuple[str, ...] = ()
    # Recipient group -> its last send, while its spacing still counts (core.dispatch.domain_throttles).
    domain_sent: dict[str, float] | None = None
    pointer_turn: int = 0  # picks pointer_user may still take in its weighted turn (core.dispatch.fairness)


def acquire(service_id: str, owner: str, now: float, lease_seconds: float) -> SchedulerStateModel | None:
    """Takes the lease when it is free (released, or expired with its dead holder); returns the
    state item as it is now, or None when a live invocation holds it."""
    state = SchedulerStateModel(service_state_key(service_id))
    acquired = update_if(
        state,
        [
            SchedulerStateModel.lease_owner.set(owner),
            SchedulerStateModel.lease_until.set(now + lease_seconds),
            # The in-flight journal's map (claims add batches under it); a dead holder's stays.
            SchedulerStateModel.inflight.set(SchedulerStateModel.inflight | {}),
        ],
        SchedulerStateModel.lease_until.does_not_exist() | (SchedulerStateModel.lease_until < now),
    )
    if not acquired:
        return None
    state.refresh(consistent_read=True)
    return state


def note_wake(service_id: str) -> None:
    """A wake-up was asked for: written before the wake-up tries the lease, so that either it takes
    the lease or the holder's stop-for-no-work sees the bump and looks again."""
    SchedulerStateModel(service_state_key(service_id)).update(actions=[SchedulerStateModel.wake_seq.add(1)])


def await_release(
    service_id: str,
    owner: str,
    predecessor: str,
    handoff_at: float,
    clock: Clock,
    lease_seconds: float,
    wait_until: float,
) -> SchedulerStateModel | None:
    """A successor: sleeps until just before its predecessor's deadline, then takes the lease as soon
    as it is free. None when the predecessor still holds it at `wait_until` (it is slow or dead: the
    watchdog tick takes over once its lease expires) or when another invocation took it first (that
    one sends on)."""
    early = handoff_at - HANDOFF_EARLY_SECONDS
    if clock.now() < early:
        clock.sleep(min(early, wait_until) - clock.now())
    while True:
        now = clock.now()
        state = acquire(service_id, owner, now, lease_seconds)
        if state is not None:
            return state
        if now >= wait_until:
            return None
        holder = _read(service_id)
        if holder is not None and holder.lease_owner != predecessor:
            return None
        clock.sleep(HANDOFF_POLL_SECONDS)


def _read(service_id: str) -> SchedulerStateModel | None:
    try:
        return SchedulerStateModel.get(service_state_key(service_id), consistent_read=True)
    except SchedulerStateModel.DoesNotExist:
        return None


def release(service_id: str, owner: str, saved: Saved, now: float, *, unless_woken_since: int | None = None) -> Release:
    """Gives the lease up and saves the pace and the round-robin pointer for the next holder. With
    `unless_woken_since` (the wake count the holder last saw), a wake-up that came in since keeps the
    lease with its holder (WOKEN) instead."""
    state = SchedulerStateModel(service_state_key(service_id))
    actions: list[Action] = [
        SchedulerStateModel.lease_until.set(0),
        SchedulerStateModel.pointer_user.set(saved.pointer_user),
        SchedulerStateModel.pointer_tasks.set(dict(saved.pointer_tasks)),
        SchedulerStateModel.pointer_turn.set(saved.pointer_turn),
        SchedulerStateModel.updated_at.set(now),
    ]
    if saved.last_send_at is not None:
        actions.append(SchedulerStateModel.last_send_at.set(saved.last_send_at))
    if saved.domain_sent is not None:
        actions.append(SchedulerStateModel.domain_sent.set(saved.domain_sent))
    actions += [SchedulerStateModel.inflight[batch_id].remove() for batch_id in saved.settled_batches]
    condition: Any = SchedulerStateModel.lease_owner == owner
    if unless_woken_since is not None:
        unchanged = (
            SchedulerStateModel.wake_seq.does_not_exist()
            if unless_woken_since == 0
            else SchedulerStateModel.wake_seq == unless_woken_since
        )
        condition = condition & unchanged
    if update_if(state, actions, condition):
        return Release.RELEASED
    holder = _read(service_id)
    if unless_woken_since is not None and holder is not None and holder.lease_owner == owner:
        return Release.WOKEN
    return Release.LOST
