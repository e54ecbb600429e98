"""Email service health: what SES says of each service's sending account, and what that makes of the
service. The health function runs `check_all_services` on its schedule (template parameter
`HealthCheckIntervalMinutes`, hourly by default); `POST /api/services/{id}/check` runs
`check_service_now` for one service.

What is read, in the service's `region`:
- the account: SES v2 `GetAccount` (`SendingEnabled`, `EnforcementStatus`, `SendQuota`). Where the
  endpoint has no `GetAccount` (moto answers 404 over HTTP, NotImplementedError in process) the
  same facts come from SES v1 `GetSendQuota` and, where it exists, `GetAccountSendingEnabled`
  (moto has neither `GetAccountSendingEnabled` nor any enforcement status): `health_source` says
  which was read;
- the sender identity: the service's `from_domain`, when it has one, must be verified for sending
  (v2 `GetEmailIdentity` `VerifiedForSendingStatus`; on the fallback v1
  `GetIdentityVerificationAttributes`, as moto's v2 always answers `false`).

What it makes of them (`assess`, the rules in one place):

| fact | health | `health_reason` or warning |
|---|---|---|
| sending disabled | unhealthy | `sending_paused` |
| enforcement SHUTDOWN | unhealthy | `enforcement:SHUTDOWN` |
| enforcement PROBATION | healthy | warning `enforcement:PROBATION` |
| `from_domain` not verified (or unknown to SES) | unhealthy | `identity_not_verified:<domain>` |
| an account-level error (send_errors' ACCOUNT class) | unhealthy | `account_error:<code>` |
| `1 / sending_rate` above `MaxSendRate` | healthy | `sending_rate_above_account_max:<r>/s><max>/s` |
| today's `daily_quota` (warm-up applied) > `Max24HourSend` | healthy | `daily_quota_above_account_max:<q>><max>` |
| a read fails otherwise (throttled, SES-side, denied) | as it was | `check_failed:<operation>:<code>` |

Several reasons are joined with ", ". Each check writes `last_health_check` and what it read on the
service in one conditional update (on the health it read, so a dispatcher marking the service
unhealthy meanwhile is not overwritten unseen); a full run also writes `last_health_check` on the
scheduler item, which the status API shows. A service becoming unhealthy is announced
(core.dispatch.control.control_changed: its sending dispatcher stops within a second); one becoming
healthy again, enabled and with the scheduler running, gets its dispatcher woken at once."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from botocore.parsers import ResponseParserError
from pydantic import BaseModel, Field
from pynamodb.expressions.update import Action

from core.api.auth import Caller
from core.api.schemas import is_identifier
from core.clock import Clock, iso
from core.dispatch.control import control_changed
from core.dispatch.schedules import SCHEDULER_STATE_KEY, scheduler_running
from core.dispatch.send_errors import SendErrorClass, classify_send_error
from core.dispatch.wakeups import WakeQueue, WakeReason
from core.dispatch.warmup import service_day_quota
from core.errors import NotFound
from core.storage.models import EmailServiceModel, SchedulerStateModel, update_if

log = logging.getLogger(__name__)

SOURCE_ACCOUNT = "sesv2:GetAccount"
SOURCE_SEND_QUOTA = "ses:GetSendQuota"  # the fallback where the endpoint has no GetAccount

SENDING_PAUSED = "sending_paused"
SHUTDOWN = "SHUTDOWN"
PROBATION = "PROBATION"

# Error codes of an endpoint that does not have the operation at all: moto's server answers an
# unknown SES v2 path with an HTML 404 (botocore then names the code after the status) and unknown
# v1 actions with an unparseable 500. Real SES never answers GetAccount with these.
_ABSENT_OPERATION_CODES = frozenset({"404", "500", "501", "NotImplemented", "NotImplementedException"})
_READ_ATTEMPTS = 3  # the conditional write, when a dispatcher changes the service's health meanwhile

ClientFactory = Callable[[str, str], Any]  # (boto3 service name, region) -> client


class RegionalClients:
    """SES clients, one per API and region, made on first use by the factory the handler gives (logic
    never builds a client). Thread-safe: the local runner runs invocations on threads."""

    def __init__(self, make: ClientFactory) -> None:
        self._make = make
        self._clients: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()

    def sesv2(self, region: str) -> Any:
        return self._client("sesv2", region)

    def ses(self, region: str) -> Any:
        return self._client("ses", region)

    def _client(self, api: str, region: str) -> Any:
        with self._lock:
            if (api, region) not in self._clients:
                self._clients[(api, region)] = self._make(api, region)
            return self._clients[(api, region)]


@dataclass(frozen=True)
class HealthDeps:
    clock: Clock
    clients: RegionalClients
    wake: WakeQueue | None = None  # wakes a service's dispatcher when it becomes healthy again


# ---------------------------------------------------------------- output


class AccountOut(BaseModel):
    """What the last check read of the service's SES account (null: not read, or not available
    from the source, e.g. the enforcement status on the v1 fallback)."""

    sending_enabled: bool | None = None
    enforcement_status: str | None = None
    max_24_hour_send: float | None = None
    max_send_rate: float | None = Field(default=None, description="emails per second")
    sent_last_24_hours: float | None = None


class ServiceHealthOut(BaseModel):
    """A service's health after a check."""

    service_id: str
    name: str
    region: str
    enabled: bool
    is_healthy: bool
    health_reason: str | None = None
    health_warnings: list[str] = Field(default_factory=list)
    health_source: str | None = Field(default=None, description=f"{SOURCE_ACCOUNT} or {SOURCE_SEND_QUOTA}")
    last_health_check: str | None = None
    account: AccountOut = Field(default_factory=AccountOut)
    changed: bool = Field(default=False, description="this check changed is_healthy")


def health_out(service: EmailServiceModel, changed: bool = False) -> ServiceHealthOut:
    return ServiceHealthOut(
        service_id=service.service_id,
        name=service.name,
        region=service.region,
        enabled=bool(service.enabled),
        is_healthy=bool(service.is_healthy),
        health_reason=service.health_reason,
        health_warnings=list(service.health_warnings or []),
        health_source=service.health_source,
        last_health_check=iso(service.last_health_check) if service.last_health_check is not None else None,
        account=AccountOut(
            sending_enabled=service.account_sending_enabled,
            enforcement_status=service.account_enforcement_status,
            max_24_hour_send=_number(service.account_max_24_hour_send),
            max_send_rate=_number(service.account_max_send_rate),
            sent_last_24_hours=_number(service.account_sent_last_24_hours),
        ),
        changed=changed,
    )


def _number(value: Any) -> float | None:
    return None if value is None else float(value)


# ---------------------------------------------------------------- reading SES


@dataclass(frozen=True)
class AccountReading:
    source: str
    sending_enabled: bool | None
    enforcement_status: str | None
    max_24_hour_send: float | None
    max_send_rate: float | None
    sent_last_24_hours: float | None


class AccountError(Exception):
    """The account read failed with an account-level error: the service cannot send."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


class CheckFailed(Exception):
    """A read failed for another reason: the check cannot tell."""

    def __init__(self, operation: str, code: str) -> None:
        super().__init__(f"{operation}: {code}")
        self.warning = f"check_failed:{operation}:{code}"


# Each read below catches whatever its one client call raises (only the call is inside the `try`):
# botocore's errors, and an emulator's (moto in process raises NotImplementedError for a missing
# operation and KeyError for a region it does not know; over HTTP an unparseable reply is
# ResponseParserError). Any of them is a failed read, judged by `operation_absent` and `_failure`.


def _error_code(error: BaseException) -> str:
    if isinstance(error, ClientError):
        return str((error.response.get("Error") or {}).get("Code") or "unknown")
    return type(error).__name__


def operation_absent(error: BaseException) -> bool:
    """The endpoint does not implement the operation (an emulator), as opposed to SES refusing it."""
    if isinstance(error, NotImplementedError | ResponseParserError):
        return True
    if isinstance(error, ClientError):
        status = (error.response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
        return _error_code(error) in _ABSENT_OPERATION_CODES or status in (404, 501)
    return False


def _failure(operation: str, error: BaseException) -> AccountError | CheckFailed:
    """An account-level error (the same class the dispatcher stops a service for) or an inconclusive read."""
    account_level = isinstance(error, ClientError | BotoCoreError) and (
        classify_send_error(error).error_class is SendErrorClass.ACCOUNT
    )
    if account_level:
        return AccountError(_error_code(error))
    return CheckFailed(operation, _error_code(error))


def read_account(clients: RegionalClients, region: str) -> AccountReading:
    """The region's account as SES v2 GetAccount reports it, or from the v1 fallback. Raises
    AccountError or CheckFailed."""
    try:
        reply = clients.sesv2(region).get_account()
    except Exception as error:
        if operation_absent(error):
            return _read_account_v1(clients, region)
        raise _failure("GetAccount", error) from error
    quota = reply.get("SendQuota") or {}
    return AccountReading(
        source=SOURCE_ACCOUNT,
        sending_enabled=bool(reply["SendingEnabled"]) if "SendingEnabled" in reply else None,
        enforcement_status=reply.get("EnforcementStatus"),
        max_24_hour_send=_number(quota.get("Max24HourSend")),
        max_send_rate=_number(quota.get("MaxSendRate")),
        sent_last_24_hours=_number(quota.get("SentLast24Hours")),
    )


def _read_account_v1(clients: RegionalClients, region: str) -> AccountReading:
    ses = clients.ses(region)
    try:
        quota = ses.get_send_quota()
    except Exception as error:
        raise _failure("GetSendQuota", error) from error
    try:
        enabled: bool | None = bool(ses.get_account_sending_enabled().get("Enabled"))
    except Exception as error:
        if not operation_absent(error):
            raise _failure("GetAccountSendingEnabled", error) from error
        enabled = None  # moto has no GetAccountSendingEnabled: unknown, not disabled
    return AccountReading(
        source=SOURCE_SEND_QUOTA,
        sending_enabled=enabled,
        enforcement_status=None,
        max_24_hour_send=_number(quota.get("Max24HourSend")),
        max_send_rate=_number(quota.get("MaxSendRate")),
        sent_last_24_hours=_number(quota.get("SentLast24Hours")),
    )


def identity_verified(clients: RegionalClients, region: str, identity: str, source: str) -> bool:
    """Whether SES lets the account send from `identity` (a domain or an address), read from the same
    API generation as the account was. Raises AccountError or CheckFailed."""
    if source == SOURCE_ACCOUNT:
        try:
            reply = clients.sesv2(region).get_email_identity(EmailIdentity=identity)
        except Exception as error:
            if _error_code(error) == "NotFoundException":
                return False  # SES does not know the identity: certainly not verified
            raise _failure("GetEmailIdentity", error) from error
        return bool(reply.get("VerifiedForSendingStatus"))
    try:
        reply = clients.ses(region).get_identity_verification_attributes(Identities=[identity])
    except Exception as error:
        raise _failure("GetIdentityVerificationAttributes", error) from error
    attributes = (reply.get("VerificationAttributes") or {}).get(identity) or {}
    return bool(attributes.get("VerificationStatus") == "Success")


class _Reads:
    """One run's reads: an account is read once per region and an identity once per region, however
    many services share them (each outcome, a failure included, is reused)."""

    def __init__(self, clients: RegionalClients) -> None:
        self._clients = clients
        self._accounts: dict[str, AccountReading | AccountError | CheckFailed] = {}
        self._identities: dict[tuple[str, str, str], bool | AccountError | CheckFailed] = {}

    def account(self, region: str) -> AccountReading:
        if region not in self._accounts:
            try:
                self._accounts[region] = read_account(self._clients, region)
            except (AccountError, CheckFailed) as error:
                self._accounts[region] = error
        outcome = self._accounts[region]
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def identity(self, region: str, identity: str, source: str) -> bool:
        key = (region, identity.lower(), source)
        if key not in self._identities:
            try:
                self._identities[key] = identity_verified(self._clients, region, identity, source)
            except (AccountError, CheckFailed) as error:
                self._identities[key] = error
        outcome = self._identities[key]
        if isinstance(outcome, Exception):
            raise outcome
        return outcome


# ---------------------------------------------------------------- the rules


@dataclass(frozen=True)
class Assessment:
    healthy: bool | None  # None: a read failed and nothing read is wrong: health stays as it was
    reasons: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    account: AccountReading | None = None

    @property
    def reason(self) -> str | None:
        return ", ".join(self.reasons) or None


def _figure(value: float) -> str:
    return format(value, ".4g")


def assess(
    *,
    sending_rate: float,
    daily_quota: int,
    from_domain: str | None,
    account: AccountReading | None,
    identity_verified: bool | None,
    account_error: str | None = None,
    failures: tuple[str, ...] = (),
) -> Assessment:
    """What the facts read make of a service (the table in the module docstring)."""
    reasons: list[str] = []
    warnings: list[str] = []
    if account_error is not None:
        reasons.append(f"account_error:{account_error}")
    if account is not None:
        if account.sending_enabled is False:
            reasons.append(SENDING_PAUSED)
        if account.enforcement_status == SHUTDOWN:
            reasons.append(f"enforcement:{SHUTDOWN}")
        elif account.enforcement_status == PROBATION:
            warnings.append(f"enforcement:{PROBATION}")
        rate = 1.0 / sending_rate if sending_rate > 0 else 0.0
        if account.max_send_rate is not None and 0 < account.max_send_rate < rate:
            warnings.append(f"sending_rate_above_account_max:{_figure(rate)}/s>{_figure(account.max_send_rate)}/s")
        # Max24HourSend -1 means unlimited.
        if account.max_24_hour_send is not None and 0 < account.max_24_hour_send < daily_quota:
            warnings.append(f"daily_quota_above_account_max:{daily_quota}>{_figure(account.max_24_hour_send)}")
    if from_domain and identity_verified is False:
        reasons.append(f"identity_not_verified:{from_domain}")
    warnings.extend(failures)
    healthy = False if reasons else (None if failures else True)
    return Assessment(healthy=healthy, reasons=tuple(reasons), warnings=tuple(warnings), account=account)


def _assess_service(service: EmailServiceModel, reads: _Reads, now: float) -> Assessment:
    account: AccountReading | None = None
    account_error: str | None = None
    verified: bool | None = None
    failures: list[str] = []
    try:
        account = reads.account(service.region)
    except AccountError as error:
        account_error = error.code
    except CheckFailed as error:
        failures.append(error.warning)
    if service.from_domain and account is not None:
        try:
            verified = reads.identity(service.region, service.from_domain, account.source)
        except AccountError as error:
            account_error = error.code
        except CheckFailed as error:
            failures.append(error.warning)
    return assess(
        sending_rate=float(service.sending_rate),
        # Today's quota: a warm-up ramp below SES's 24-hour maximum is no reason to warn.
        daily_quota=service_day_quota(service, now).effective,
        from_domain=service.from_domain,
        account=account,
        identity_verified=verified,
        account_error=account_error,
        failures=tuple(failures),
    )


# ---------------------------------------------------------------- recording


def _actions(assessment: Assessment, now: float) -> list[Action]:
    model = EmailServiceModel
    actions: list[Action] = [model.last_health_check.set(now), model.health_warnings.set(list(assessment.warnings))]
    account = assessment.account
    if account is not None:
        values: list[tuple[Any, Any]] = [
            (model.health_source, account.source),
            (model.account_sending_enabled, account.sending_enabled),
            (model.account_enforcement_status, account.enforcement_status),
            (model.account_max_24_hour_send, account.max_24_hour_send),
            (model.account_max_send_rate, account.max_send_rate),
            (model.account_sent_last_24_hours, account.sent_last_24_hours),
        ]
        actions += [attribute.remove() if value is None else attribute.set(value) for attribute, value in values]
    if assessment.healthy is not None:
        actions.append(model.is_healthy.set(assessment.healthy))
        reason = assessment.reason
        actions.append(model.health_reason.remove() if reason is None else model.health_reason.set(reason[:500]))
    return actions


def _record(service: EmailServiceModel, assessment: Assessment, now: float) -> bool | None:
    """Writes the check on the service, conditional on the health it had when read (a dispatcher may
    mark it unhealthy meanwhile: then it is read again and the change judged against that). Returns
    the health it had before this write; None when the service was deleted meanwhile."""
    actions = _actions(assessment, now)
    for _ in range(_READ_ATTEMPTS):
        before = bool(service.is_healthy)
        same = EmailServiceModel.is_healthy == before
        if before:  # an item written before the attribute existed counts as healthy (the model's default)
            same = same | EmailServiceModel.is_healthy.does_not_exist()
        if update_if(service, actions, EmailServiceModel.service_id.exists() & same):
            return before
        try:
            service.refresh(consistent_read=True)
        except EmailServiceModel.DoesNotExist:
            return None
    raise RuntimeError(f"service {service.service_id}: health kept changing under the check")


def _announce(service: EmailServiceModel, before: bool, deps: HealthDeps) -> None:
    after = bool(service.is_healthy)
    if before and not after:
        log.warning("service %s is unhealthy: %s", service.service_id, service.health_reason)
        control_changed()  # a dispatcher sending on it reloads the service within a second and stops
    elif after and not before:
        log.info("service %s is healthy again", service.service_id)
        if deps.wake is not None and service.enabled and scheduler_running():
            deps.wake.wake([service.service_id], WakeReason.ENABLED)  # its queued work starts now


def _check(service: EmailServiceModel, reads: _Reads, deps: HealthDeps) -> ServiceHealthOut | None:
    now = deps.clock.now()
    assessment = _assess_service(service, reads, now)
    before = _record(service, assessment, now)
    if before is None:
        return None
    _announce(service, before, deps)
    return health_out(service, changed=before != bool(service.is_healthy))


# ---------------------------------------------------------------- entry points


@dataclass
class HealthRun:
    checked_at: float
    results: list[ServiceHealthOut] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # services whose check raised (logged)

    @property
    def unhealthy(self) -> list[str]:
        """Enabled services unhealthy after the run (what the UnhealthyServices metric counts)."""
        return [result.service_id for result in self.results if result.enabled and not result.is_healthy]

    def summary(self) -> dict[str, Any]:
        return {
            "checked": len(self.results),
            "unhealthy": self.unhealthy,
            "changed": [result.service_id for result in self.results if result.changed],
            "errors": self.errors,
            "checked_at": iso(self.checked_at),
        }


def check_all_services(deps: HealthDeps) -> HealthRun:
    """Checks every email service (disabled ones too: an operator sees their health before enabling
    them), then records the run's time on the scheduler item. One service's failure is logged and
    reported in `errors`; the others are still checked."""
    run = HealthRun(checked_at=deps.clock.now())
    reads = _Reads(deps.clients)
    for service in EmailServiceModel.scan():
        try:
            result = _check(service, reads, deps)
        except Exception:  # one service's bug must not leave every other one unchecked
            log.exception("health check of service %s failed", service.service_id)
            run.errors.append(service.service_id)
            continue
        if result is not None:
            run.results.append(result)
    SchedulerStateModel(SCHEDULER_STATE_KEY).update(actions=[SchedulerStateModel.last_health_check.set(run.checked_at)])
    return run


def check_service(service_id: str, deps: HealthDeps) -> ServiceHealthOut:
    """Checks one service now."""
    try:
        service = EmailServiceModel.get(service_id, consistent_read=True)
    except EmailServiceModel.DoesNotExist as error:
        raise NotFound("email service", service_id) from error
    result = _check(service, _Reads(deps.clients), deps)
    if result is None:
        raise NotFound("email service", service_id)
    return result


def check_service_now(caller: Caller, service_id: str, deps: HealthDeps) -> ServiceHealthOut:
    """`POST /api/services/{service_id}/check`: administrators only."""
    caller.require_admin()
    if not is_identifier(service_id):
        raise NotFound("email service", service_id)
    return check_service(service_id, deps)
