"""One EventBridge Scheduler schedule per email service: every minute it invokes the dispatcher with
`{"service_id": ...}`. A schedule is ENABLED only while the scheduler runs and its service is
enabled, so idle services cost no invocations.

The schedule's state saves invocations; it is not the guarantee. The dispatcher itself checks the
running flag and the service's `enabled` before sending, so a schedule that is briefly ENABLED by a
race (two PATCHes, a PATCH during stop) only starts a dispatcher that exits at once, and the next
start/stop or PATCH puts the schedule right again.

Callers pass a Scheduler client and a ScheduleConfig; nothing here reads the environment."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from core.dispatch.tiers import TierTargets
from core.errors import ServiceUnavailable
from core.settings import Settings
from core.storage.models import EmailServiceModel, SchedulerStateModel

SCHEDULE_PREFIX = "dispatch-"
SCHEDULE_EXPRESSION = "rate(1 minute)"  # Scheduler's finest rate; the dispatcher paces inside it
# A tick older than a minute is superseded by the next one: never deliver it late.
MAXIMUM_EVENT_AGE_SECONDS = 60
MAXIMUM_RETRY_ATTEMPTS = 0

ENABLED = "ENABLED"
DISABLED = "DISABLED"


@dataclass(frozen=True)
class ScheduleConfig:
    """Where schedules live and what they invoke (from the API function's environment)."""

    group: str
    dispatcher_arn: str
    role_arn: str
    dead_letter_arn: str = ""
    paced_dispatcher_arn: str = ""  # services at most 10/s (core.dispatch.tiers); empty: the one above

    @property
    def targets(self) -> TierTargets:
        return TierTargets(self.dispatcher_arn, self.paced_dispatcher_arn)

    @classmethod
    def from_settings(cls, settings: Settings) -> ScheduleConfig:
        return cls(
            group=settings.schedule_group,
            dispatcher_arn=settings.dispatcher_function_arn,
            role_arn=settings.scheduler_role_arn,
            dead_letter_arn=settings.dispatch_dead_letter_queue_arn,
            paced_dispatcher_arn=settings.paced_dispatcher_function_arn,
        )


def schedule_name(service_id: str) -> str:
    return f"{SCHEDULE_PREFIX}{service_id}"


def desired_state(service: EmailServiceModel, running: bool) -> str:
    return ENABLED if running and bool(service.enabled) else DISABLED


def schedule_request(
    config: ScheduleConfig, service_id: str, state: str, sending_rate: float | None = None
) -> dict[str, Any]:
    """The whole schedule; UpdateSchedule replaces every field, so create and update send the same.
    The target is the dispatcher function of the service's pace tier."""
    target: dict[str, Any] = {
        "Arn": config.targets.for_rate(sending_rate),
        "RoleArn": config.role_arn,
        "Input": json.dumps({"service_id": service_id}),
        "RetryPolicy": {
            "MaximumEventAgeInSeconds": MAXIMUM_EVENT_AGE_SECONDS,
            "MaximumRetryAttempts": MAXIMUM_RETRY_ATTEMPTS,
        },
    }
    if config.dead_letter_arn:
        target["DeadLetterConfig"] = {"Arn": config.dead_letter_arn}
    return {
        "Name": schedule_name(service_id),
        "GroupName": config.group,
        "Description": f"Dispatcher tick for email service {service_id}",
        "ScheduleExpression": SCHEDULE_EXPRESSION,
        "FlexibleTimeWindow": {"Mode": "OFF"},
        "State": state,
        "Target": target,
    }


def _error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def _put_schedule(client: Any, request: dict[str, Any]) -> None:
    """Update, or create when missing; a create that loses a race to another create updates."""
    try:
        client.update_schedule(**request)
        return
    except ClientError as error:
        if _error_code(error) != "ResourceNotFoundException":
            raise
    try:
        client.create_schedule(**request)
    except ClientError as error:
        if _error_code(error) != "ConflictException":
            raise
        client.update_schedule(**request)


def sync_service_schedule(client: Any, config: ScheduleConfig, service: EmailServiceModel, running: bool) -> str:
    """Makes the service's schedule exist with the state it should have; returns that state.
    Idempotent: calling it again with the same inputs changes nothing."""
    state = desired_state(service, running)
    try:
        rate = float(service.sending_rate) if service.sending_rate is not None else None
        _put_schedule(client, schedule_request(config, service.service_id, state, rate))
    except (BotoCoreError, ClientError) as error:
        raise ServiceUnavailable(
            f"the dispatch schedule of email service {service.service_id!r} could not be saved; retry"
        ) from error
    return state


def delete_service_schedule(client: Any, config: ScheduleConfig, service_id: str) -> None:
    """Removes the service's schedule; a schedule already gone is fine."""
    try:
        client.delete_schedule(Name=schedule_name(service_id), GroupName=config.group)
    except ClientError as error:
        if _error_code(error) == "ResourceNotFoundException":
            return
        raise ServiceUnavailable(
            f"the dispatch schedule of email service {service_id!r} could not be deleted"
        ) from error
    except BotoCoreError as error:
        raise ServiceUnavailable(
            f"the dispatch schedule of email service {service_id!r} could not be deleted"
        ) from error


def sync_all_schedules(client: Any, config: ScheduleConfig, running: bool) -> int:
    """Brings every service's schedule in line with `running`; returns how many services there are.
    One Scheduler call per service (two for one without a schedule yet), well within its API rate."""
    count = 0
    for service in EmailServiceModel.scan(consistent_read=True):
        sync_service_schedule(client, config, service, running)
        count += 1
    return count


SCHEDULER_STATE_KEY = "scheduler"


def scheduler_running() -> bool:
    """The running flag start/stop set (absent: never started, so stopped)."""
    try:
        state = SchedulerStateModel.get(SCHEDULER_STATE_KEY, consistent_read=True)
    except SchedulerStateModel.DoesNotExist:
        return False
    return bool(state.running)
