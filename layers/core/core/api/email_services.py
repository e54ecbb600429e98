"""Email services (sending accounts) as administrators manage them and users see them: settings,
health, and today's usage. Usage is read from ServiceUsageModel (one item per service and UTC day,
written by the dispatcher's conditional ADD); this module never writes it. Every service has a
dispatch schedule (core.dispatch.schedules), created with it and updated whenever `enabled` changes."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from pynamodb.exceptions import PutError
from pynamodb.expressions.update import Action

from core.api.auth import Caller
from core.api.ownership import load_services
from core.api.schemas import ServiceIn, ServiceList, ServiceOut, ServicePatch, is_identifier
from core.api.sending_rules_schemas import DeferralOut, stored_domain_limits, warmup_out
from core.clock import Clock, iso, to_datetime, utc_day
from core.dispatch.control import control_changed
from core.dispatch.schedules import ScheduleConfig, delete_service_schedule, scheduler_running, sync_service_schedule
from core.dispatch.wakeups import WakeQueue, WakeReason
from core.dispatch.warmup import service_day_quota
from core.errors import NotFound
from core.service_health import RegionalClients
from core.storage.ids import new_id
from core.storage.models import EmailServiceModel, ServiceUsageModel, UserModel, update_if

_BATCH_GET_LIMIT = 100


@dataclass(frozen=True)
class ServiceDeps:
    clock: Clock
    scheduler: Any  # boto3 EventBridge Scheduler client
    schedules: ScheduleConfig
    wake: WakeQueue | None = None
    ses_clients: RegionalClients | None = None  # registers a service's from_domain in its region


log = logging.getLogger(__name__)


def _register_from_domain(service: EmailServiceModel, deps: ServiceDeps) -> None:
    """Asks SES (v2 CreateEmailIdentity, in the service's region) to verify the service's domain, as
    POST /api/senders does for an address: SES answers with the DKIM records to publish, and the
    health check reports `identity_not_verified:<domain>` until they are. Best effort: the service
    is saved either way, and the health check says whether the domain can send."""
    if not service.from_domain or deps.ses_clients is None:
        return
    try:
        deps.ses_clients.sesv2(service.region).create_email_identity(EmailIdentity=service.from_domain)
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") != "AlreadyExistsException":
            log.warning("could not register %s with SES in %s: %s", service.from_domain, service.region, error)
    except (BotoCoreError, KeyError) as error:  # KeyError: an embedded SES without that region
        log.warning("could not register %s with SES in %s: %s", service.from_domain, service.region, error)


def _recheck_running(service: EmailServiceModel, deps: ServiceDeps, running: bool) -> None:
    """Reads the running flag again after the service was saved and its schedule synced: a
    start/stop that flipped it meanwhile may have scanned the services before our write (or synced
    after our read), so we redo its work for this service."""
    now_running = scheduler_running()
    if now_running != running:
        sync_service_schedule(deps.scheduler, deps.schedules, service, now_running)


def create_service(caller: Caller, request: ServiceIn, deps: ServiceDeps) -> ServiceOut:
    """The schedule is created first: if Scheduler refuses, nothing is written and a retry is safe."""
    caller.require_admin()
    service = EmailServiceModel(
        new_id("svc"),
        name=request.name,
        region=request.region,
        sending_rate=request.sending_rate,
        daily_quota=request.daily_quota,
        from_domain=request.from_domain,
        configuration_set=request.configuration_set,
        enabled=True,
        is_healthy=True,
        created_at=deps.clock.now(),
        domain_limits=stored_domain_limits(request.domain_limits),
        interleave_domains=request.interleave_domains,
        warmup=request.warmup.stored(to_datetime(deps.clock.now()).date()) if request.warmup else None,
    )
    running = scheduler_running()
    sync_service_schedule(deps.scheduler, deps.schedules, service, running)
    try:
        service.save(condition=EmailServiceModel.service_id.does_not_exist())
    except PutError:
        delete_service_schedule(deps.scheduler, deps.schedules, service.service_id)
        raise
    _recheck_running(service, deps, running)
    _register_from_domain(service, deps)
    return service_out(service, used_today=0, now=deps.clock.now())


def update_service(caller: Caller, service_id: str, request: ServicePatch, deps: ServiceDeps) -> ServiceOut:
    """Changes only the fields given. The schedule is re-synced from the stored item, so a PATCH
    also repairs a schedule an earlier failure left behind; rate and quota changes keep it as is
    (the dispatcher reads them from the service on every tick)."""
    caller.require_admin()
    if not is_identifier(service_id):
        raise NotFound("email service", service_id)
    actions: list[Action] = []
    for field in sorted(request.model_fields_set):
        attribute = getattr(EmailServiceModel, field)
        value = _stored(request, field, deps.clock.now())
        # Only the nullable fields can be None here (the schema refuses null for the others).
        actions.append(attribute.remove() if value is None else attribute.set(value))
    service = EmailServiceModel(service_id)
    if actions:
        # One conditional UpdateItem: an unknown id is a 404 and never creates an item.
        if not update_if(service, actions, EmailServiceModel.service_id.exists()):
            raise NotFound("email service", service_id)
        control_changed()  # its dispatcher picks up rate, quota and switches within a second
    else:
        try:
            service = EmailServiceModel.get(service_id, consistent_read=True)
        except EmailServiceModel.DoesNotExist as error:
            raise NotFound("email service", service_id) from error
    # `service` holds the stored item (UpdateItem returns ALL_NEW): sync from what is stored.
    running = scheduler_running()
    sync_service_schedule(deps.scheduler, deps.schedules, service, running)
    _recheck_running(service, deps, running)
    if "from_domain" in request.model_fields_set or "region" in request.model_fields_set:
        _register_from_domain(service, deps)
    if running and deps.wake is not None:
        if service.enabled:
            deps.wake.wake([service_id], WakeReason.ENABLED)  # enabled again: work waiting on it starts now
        elif "enabled" in request.model_fields_set:
            # Disabled: its dispatcher runs once more, finds it disabled and fails its queued work
            # over to the users' other services (its schedule no longer fires).
            deps.wake.wake([service_id], WakeReason.DISABLED)
    used = _used_today([service_id], deps.clock).get(service_id, 0)
    return service_out(service, used_today=used, now=deps.clock.now())


def _stored(request: ServicePatch, field: str, now: float) -> Any:
    """A PATCH field as the service item keeps it."""
    if field == "domain_limits":
        return stored_domain_limits(request.domain_limits)
    if field == "warmup":
        return request.warmup.stored(to_datetime(now).date()) if request.warmup else None
    return getattr(request, field)


def list_services(caller: Caller, clock: Clock) -> ServiceList:
    """Administrators see every service; a user sees the services assigned to them."""
    if caller.is_admin:
        services = sorted(EmailServiceModel.scan(), key=lambda service: service.service_id)
    else:
        try:
            user = UserModel.get(caller.user_id, consistent_read=True)
        except UserModel.DoesNotExist:
            return ServiceList(services=[])
        by_id = load_services(list(user.service_ids or []))
        services = [by_id[service_id] for service_id in user.service_ids or [] if service_id in by_id]
    used = _used_today([service.service_id for service in services], clock)
    now = clock.now()
    return ServiceList(services=[service_out(service, used.get(service.service_id, 0), now) for service in services])


def _used_today(service_ids: list[str], clock: Clock) -> dict[str, int]:
    day = utc_day(clock.now())
    used: dict[str, int] = {}
    for start in range(0, len(service_ids), _BATCH_GET_LIMIT):
        keys = [(service_id, day) for service_id in service_ids[start : start + _BATCH_GET_LIMIT]]
        for usage in ServiceUsageModel.batch_get(keys):
            used[usage.service_id] = int(usage.used or 0)
    return used


def service_out(service: EmailServiceModel, used_today: int, now: float) -> ServiceOut:
    quota = service_day_quota(service, now)  # today's: the daily quota, capped by a warm-up ramp
    remaining = max(quota.effective - used_today, 0)
    # A service with a zero quota can send nothing today: it reads as fully used.
    percentage = round(100.0 * used_today / quota.effective, 2) if quota.effective else 100.0
    return ServiceOut(
        service_id=service.service_id,
        name=service.name,
        region=service.region,
        sending_rate=float(service.sending_rate),
        daily_quota=int(service.daily_quota),
        from_domain=service.from_domain,
        configuration_set=service.configuration_set,
        enabled=bool(service.enabled),
        is_healthy=bool(service.is_healthy),
        health_reason=service.health_reason,
        last_health_check=iso(service.last_health_check) if service.last_health_check else None,
        used_today=used_today,
        remaining_quota=remaining,
        usage_percentage=min(percentage, 100.0),
        last_sent=iso(service.last_sent) if service.last_sent else None,
        created_at=iso(service.created_at),
        domain_limits=_as_dict(service.domain_limits) or {},
        interleave_domains=service.interleave_domains is not False,
        domain_deferrals=deferrals_out(_as_dict(service.domain_deferrals), now),
        warmup=warmup_out(quota),
    )


def _as_dict(value: Any) -> dict[str, Any] | None:
    """A stored map attribute as plain data (PynamoDB gives a MapAttribute or a dict)."""
    if value is None:
        return None
    return dict(value.as_dict()) if hasattr(value, "as_dict") else dict(value)


def deferrals_out(deferrals: dict[str, Any] | None, now: float) -> dict[str, DeferralOut]:
    """The groups still slowed down by provider deferrals at `now`."""
    return {
        group: DeferralOut(level=int(entry["level"]), until=iso(float(entry["until"])))
        for group, entry in sorted((deferrals or {}).items())
        if float(entry.get("until", 0)) > now
    }
