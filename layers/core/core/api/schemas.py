"""Input and output shapes of the API (pydantic). Limits are stated here, once, and enforced by
validation before anything is written."""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import botocore.session
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    EmailStr,
    Field,
    PlainValidator,
    StrictBool,
    StrictFloat,
    StrictInt,
    StringConstraints,
    field_validator,
)
from pydantic.json_schema import SkipJsonSchema

from core.api.sending_rules_schemas import (
    DeferralOut,
    DomainLimits,
    SendWindowIn,
    SendWindowOut,
    WarmupIn,
    WarmupOut,
)
from core.clock import iso
from core.mail.header_rules import check_address, check_header_text
from core.states import TaskPriority
from core.storage.models import TaskModel

MAX_CONTACTS_PER_IMPORT = 1000
MAX_TAGS_PER_CONTACT = 50
MAX_ATTRIBUTES_PER_CONTACT = 50
MAX_EXPLICIT_CONTACTS_PER_TASK = 5000
MAX_TEMPLATES_PER_TASK = 10
MAX_TAGS_PER_RULE = 20
MAX_SERVICES_PER_USER = 50
MAX_USER_WEIGHT = 100
MAX_TEMPLATE_BODY_CHARS = 512_000
MAX_SUBJECT_CHARS = 998  # RFC 5322 line length

_ID_PATTERN = r"^[A-Za-z0-9_.:@-]{1,128}$"


# Header injection and unsendable mail: core.mail.header_rules is the one rule set, shared with the
# MIME builder. Every name is held to it (service, task and template names too: they show up in
# reports, logs and CSV exports, where a line break is just as wrong).
HeaderText = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1), AfterValidator(check_header_text)]
Identifier = Annotated[str, StringConstraints(pattern=_ID_PATTERN)]
Tag = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")]
Name = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200), AfterValidator(check_header_text)
]
# An address SES can send to and from (ASCII local part; no control characters).
EmailAddress = Annotated[EmailStr, AfterValidator(check_address)]

# Timestamps: ISO 8601 text with an offset, years 2000-2200 once in UTC, kept to the second.
# A number is refused rather than guessed at (10**11 read as milliseconds would be 1973).
MIN_YEAR = 2000
MAX_YEAR = 2200


def _timestamp_text(value: Any) -> Any:
    if not isinstance(value, str | datetime):
        raise ValueError("must be an ISO 8601 date-time string with an offset, e.g. 2027-01-31T09:00:00+01:00")
    return value


def _timestamp_bounds(value: datetime) -> datetime:
    # Check the local year first: converting year 1 or 9999 to UTC can overflow.
    if not MIN_YEAR - 1 <= value.year <= MAX_YEAR + 1 or not MIN_YEAR <= value.astimezone(UTC).year <= MAX_YEAR:
        raise ValueError(f"must be between the years {MIN_YEAR} and {MAX_YEAR} (UTC)")
    return value.astimezone(UTC).replace(microsecond=0)


Timestamp = Annotated[AwareDatetime, BeforeValidator(_timestamp_text), AfterValidator(_timestamp_bounds)]


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)


class ErrorDetail(BaseModel):
    field: str | None  # the request field, header or query parameter at fault (null when none)
    reason: str


class ErrorBody(BaseModel):
    """Every API error (4xx, 503): a code, a sentence, and what was wrong where."""

    error: str
    message: str
    details: list[ErrorDetail]


def unique(values: list[Any]) -> list[Any]:
    """Order-preserving de-duplication."""
    return list(dict.fromkeys(values))


class UserIn(StrictModel):
    user_id: Identifier
    email: EmailAddress
    quota: StrictInt = Field(ge=0, le=10_000_000_000)
    # Picks per round on every service the user shares (weighted fairness, docs/sending.md).
    weight: StrictInt = Field(default=1, ge=1, le=MAX_USER_WEIGHT)


def _no_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)  # a PATCH field left out is not changed: the document offers no default


class UserPatch(StrictModel):
    """Admin: only the fields given (model_fields_set) change; none may be null. Not a union with
    None, so a bad value is one error naming the field."""

    weight: StrictInt = Field(default=1, ge=1, le=MAX_USER_WEIGHT, json_schema_extra=_no_default)


class UserOut(BaseModel):
    user_id: str
    email: str
    quota: int
    remaining_quota: int
    service_ids: list[str]
    created_at: str
    # Set while the reputation guard holds the tenant's sending (docs/reputation.md); an admin clears it.
    sending_hold: str | None = None
    sending_hold_at: str | None = None
    weight: int = 1


# ---------------------------------------------------------------- email services


def is_identifier(value: str) -> bool:
    """Whether a path id can name anything; ids that cannot are a 404 without a read."""
    return re.fullmatch(_ID_PATTERN, value) is not None


MIN_SENDING_RATE = 0.0001  # seconds between sends: 10,000/s, above any SES account's rate
MAX_SENDING_RATE = 86_400.0  # one email a day
MAX_DAILY_QUOTA = 1_000_000_000

# Regions where SES v2 has an endpoint (botocore's endpoint data): a region SES does not serve would
# only fail later, at the health check and at every send.
SES_REGIONS = frozenset(
    region
    for partition in ("aws", "aws-us-gov")
    for region in botocore.session.get_session().get_available_regions("sesv2", partition_name=partition)
)


def _ses_region(region: str) -> str:
    if region not in SES_REGIONS:
        raise ValueError(f"SES is not available in {region!r}")
    return region


Region = Annotated[str, StringConstraints(pattern=r"^[a-z]{2}(-gov)?-[a-z]+-\d{1,2}$"), AfterValidator(_ses_region)]
DomainName = Annotated[
    str,
    StringConstraints(max_length=253, pattern=r"^([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}$"),
]
ConfigurationSetName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
SendingRate = Annotated[StrictFloat, Field(ge=MIN_SENDING_RATE, le=MAX_SENDING_RATE, allow_inf_nan=False)]
DailyQuota = Annotated[StrictInt, Field(ge=0, le=MAX_DAILY_QUOTA)]


class ServiceIn(StrictModel):
    name: Name
    region: Region
    sending_rate: SendingRate  # minimum seconds between two sends (fractions allowed)
    daily_quota: DailyQuota  # emails per UTC day
    from_domain: DomainName | None = None
    configuration_set: ConfigurationSetName | None = None
    # Recipient-domain throttles (docs/domain-throttles.md): provider or domain -> limits.
    domain_limits: DomainLimits | None = None
    interleave_domains: StrictBool = True
    warmup: WarmupIn | None = None  # a warm-up ramp (docs/warmup.md)


class ServicePatch(StrictModel):
    """Only the fields given change. `from_domain` / `configuration_set` / `domain_limits` /
    `warmup` may be set to null to clear them; the other fields cannot be null."""

    # SkipJsonSchema: omitted is allowed, null is not (the document must not offer it).
    name: Name | SkipJsonSchema[None] = None
    region: Region | SkipJsonSchema[None] = None
    sending_rate: SendingRate | SkipJsonSchema[None] = None
    daily_quota: DailyQuota | SkipJsonSchema[None] = None
    from_domain: DomainName | None = None
    configuration_set: ConfigurationSetName | None = None
    enabled: StrictBool | SkipJsonSchema[None] = None
    domain_limits: DomainLimits | None = None
    interleave_domains: StrictBool | SkipJsonSchema[None] = None
    warmup: WarmupIn | None = None

    @field_validator("name", "region", "sending_rate", "daily_quota", "enabled", "interleave_domains", mode="before")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        # Runs only for fields the caller sent (defaults are not validated): an explicit null.
        if value is None:
            raise ValueError("must not be null")
        return value


class ServiceOut(BaseModel):
    service_id: str
    name: str
    region: str
    sending_rate: float
    daily_quota: int
    from_domain: str | None = None
    configuration_set: str | None = None
    enabled: bool
    is_healthy: bool
    health_reason: str | None = None
    last_health_check: str | None = None
    used_today: int
    remaining_quota: int
    usage_percentage: float
    last_sent: str | None = None
    created_at: str
    domain_limits: dict[str, dict[str, int]] = {}
    interleave_domains: bool = True
    domain_deferrals: dict[str, DeferralOut] = {}  # groups slowed down after provider deferrals
    warmup: WarmupOut | None = None


class ServiceList(BaseModel):
    services: list[ServiceOut]


class ServiceAssignment(StrictModel):
    service_ids: list[Identifier] = Field(max_length=MAX_SERVICES_PER_USER)


# ---------------------------------------------------------------- senders

# HeaderText with a length cap (written out: a constraint after HeaderText's validator reads badly).
SenderName = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200), AfterValidator(check_header_text)
]


class SenderIn(StrictModel):
    email: EmailAddress
    name: SenderName


class SenderOut(BaseModel):
    sender_id: str
    email: str
    name: str
    created_at: str


class SenderPage(BaseModel):
    senders: list[SenderOut]
    cursor: str | None = None


# ---------------------------------------------------------------- contacts

MAX_ATTRIBUTES_BYTES = 4096  # attributes of one contact, serialized as compact JSON
MAX_ATTRIBUTE_NUMBER = 1e100  # DynamoDB numbers span 1e-130..1e126; keep well inside
DEFAULT_PAGE_SIZE = 100
# A contact is at most ~8 KB (4 KB attributes + 50 tags); 500 keep a page under Lambda's 6 MB reply.
MAX_CONTACTS_PAGE = 500

AttributeKey = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")]


MAX_ATTRIBUTE_INT = 2**53  # exact in JSON clients and in DynamoDB


def _attribute_value(value: Any) -> str | int | float | bool:
    """One check with one clear reason (a pydantic union would report four)."""
    if isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        if abs(value) > MAX_ATTRIBUTE_INT:
            raise ValueError("integer out of range (|x| <= 2**53)")
        return value
    if isinstance(value, float):
        if not math.isfinite(value) or (
            value != 0 and not 1 / MAX_ATTRIBUTE_NUMBER <= abs(value) <= MAX_ATTRIBUTE_NUMBER
        ):
            raise ValueError("number out of range (0 or 1e-100 <= |x| <= 1e100)")
        return value
    raise ValueError("must be a string, number or boolean")


AttributeValue = Annotated[
    str | int | float | bool,
    PlainValidator(_attribute_value, json_schema_input_type=str | int | float | bool),
]


def _attributes_fit(value: dict[str, Any]) -> dict[str, Any]:
    size = len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())
    if size > MAX_ATTRIBUTES_BYTES:
        raise ValueError(f"attributes take {size} bytes serialized; at most {MAX_ATTRIBUTES_BYTES}")
    return value


Attributes = Annotated[
    dict[AttributeKey, AttributeValue],
    Field(max_length=MAX_ATTRIBUTES_PER_CONTACT),
    AfterValidator(_attributes_fit),
]


def _iana_timezone(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_+-]+(/[A-Za-z0-9_+-]+)*", value) or len(value) > 64:
        raise ValueError("not an IANA time zone name (e.g. Europe/Paris)")
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError, OSError) as error:
        raise ValueError("not an IANA time zone name (e.g. Europe/Paris)") from error
    return value


TimeZoneName = Annotated[str, AfterValidator(_iana_timezone)]
ContactName = SenderName


class ContactIn(StrictModel):
    """On re-import of an address, only the fields given replace the stored ones (null clears
    `name` / `timezone`); `status` and `created_at` never change through import."""

    email: EmailAddress
    name: ContactName | None = None
    tags: list[Tag] = Field(default_factory=list, max_length=MAX_TAGS_PER_CONTACT)
    attributes: Attributes = Field(default_factory=dict)
    timezone: TimeZoneName | None = None

    @field_validator("tags", "attributes", mode="before")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        if value is None:
            raise ValueError("must not be null (send [] or {} to clear)")
        return value


class ContactImport(StrictModel):
    contacts: list[ContactIn] = Field(min_length=1, max_length=MAX_CONTACTS_PER_IMPORT)


class ContactImported(BaseModel):
    contact_ids: list[str]  # one per distinct address, in first-seen order


class ContactOut(BaseModel):
    contact_id: str
    email: str
    name: str | None = None
    tags: list[str]
    attributes: dict[str, Any]
    timezone: str | None = None
    status: str
    created_at: str
    updated_at: str


class ContactPage(BaseModel):
    contacts: list[ContactOut]
    cursor: str | None = None


# ---------------------------------------------------------------- templates

# A template is one DynamoDB item (at most 400 KB): subject, html and text together, in UTF-8.
MAX_TEMPLATE_BYTES = 380_000

Subject = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_SUBJECT_CHARS),
    AfterValidator(check_header_text),
]
TemplateBody = Annotated[str, StringConstraints(min_length=1, max_length=MAX_TEMPLATE_BODY_CHARS)]


class TemplateIn(StrictModel):
    name: Name
    subject: Subject
    html: TemplateBody
    text: TemplateBody | None = None


class TemplateOut(BaseModel):
    template_id: str
    name: str
    subject: str
    html: str
    text: str | None = None
    created_at: str


class TemplateSummary(BaseModel):
    """List entries leave the bodies out: 512 KB each would overflow a reply."""

    template_id: str
    name: str
    subject: str
    html_chars: int
    text_chars: int | None = None
    created_at: str


class TemplatePage(BaseModel):
    templates: list[TemplateSummary]
    cursor: str | None = None


class SampleContact(StrictModel):
    email: EmailAddress
    name: ContactName | None = None
    attributes: Attributes = Field(default_factory=dict)


class PreviewIn(StrictModel):
    """Exactly one of `contact_id` (one of the caller's contacts) or `sample`."""

    contact_id: Identifier | None = None
    sample: SampleContact | None = None


class RenderedOut(BaseModel):
    subject: str
    html: str
    text: str | None = None


# ---------------------------------------------------------------- tasks


class RecipientRule(StrictModel):
    type: Literal["tag_based"]
    include_tags: list[Tag] = Field(min_length=1, max_length=MAX_TAGS_PER_RULE)
    exclude_tags: list[Tag] = Field(default_factory=list, max_length=MAX_TAGS_PER_RULE)


class TaskIn(StrictModel):
    name: Name
    sender_id: Identifier
    templates: list[Identifier] = Field(min_length=1, max_length=MAX_TEMPLATES_PER_TASK)
    contacts: list[Identifier] | None = Field(default=None, max_length=MAX_EXPLICIT_CONTACTS_PER_TASK)
    recipient_rule: RecipientRule | None = None
    scheduled_at: Timestamp | None = None
    # Orders the user's tasks within the user's share (urgent first; docs/sending.md).
    priority: TaskPriority = TaskPriority.NORMAL
    # Seconds after scheduled_at (or creation) past which the task is not started but `expired`
    # (docs/late-start.md); null: the stack's default (24 h).
    max_lateness: StrictInt | None = Field(default=None, ge=60, le=31_536_000)
    send_window: SendWindowIn | None = None  # deliver in each recipient's local hours (docs/send-windows.md)


class TaskCountsOut(BaseModel):
    total: int = 0
    queued: int = 0
    sending: int = 0
    sent: int = 0
    failed: int = 0
    suppressed: int = 0
    unknown: int = 0
    cancelled: int = 0
    # What SES reported after the send, once per email (docs/ses-events.md).
    delivered: int = 0
    bounced: int = 0
    soft_bounced: int = 0
    complained: int = 0
    rejected: int = 0


class TaskOut(BaseModel):
    task_id: str
    user_id: str
    name: str
    status: str
    reason: str | None = None
    sender_id: str
    templates: list[str]
    contacts: int  # how many explicit contact ids the task named
    recipient_rule: RecipientRule | None = None
    scheduled_at: str | None = None
    quota_reserved: int | None = None
    counts: TaskCountsOut
    created_at: str
    updated_at: str
    priority: str = TaskPriority.NORMAL.value
    max_lateness: int | None = None  # null: the stack's default
    late_start_confirmed: bool = False
    began_at: str | None = None  # when its first email was claimed for sending
    send_window: SendWindowOut | None = None


class TaskCreated(BaseModel):
    task_id: str
    status: str


class TaskPage(BaseModel):
    tasks: list[TaskOut]
    cursor: str | None = None


# ---------------------------------------------------------------- failed recipients

# A failures page is read from 16 shards with a filter; 500 small items keep a reply well under 1 MB.
DEFAULT_FAILURES_PAGE = 50
MAX_FAILURES_PAGE = 500
FailureStatus = Literal["failed", "unknown"]


class FailureOut(BaseModel):
    """One recipient of the task that did not get its email (`failed`), or may or may not have
    (`unknown`: the send's outcome was lost, so it is never retried)."""

    contact_id: str
    email: str
    status: FailureStatus
    error_class: str | None = None  # core.dispatch.send_errors' class, or render / render_timeout / message
    message: str | None = None  # the last error, as SES (or the renderer) gave it
    attempts: int
    failed_at: str | None = None  # when it failed or became unknown (null for items older than the field)
    may_have_been_sent: bool  # true exactly for `unknown`


class FailurePage(BaseModel):
    task_id: str
    status: FailureStatus  # which list this page is of
    failures: list[FailureOut]
    cursor: str | None = None


class RetryFailedOut(BaseModel):
    """Reply of retry-failed: how many `failed` recipients were queued again (their quota taken
    back), and the task as it stands after."""

    task_id: str
    requeued: int
    status: str
    counts: TaskCountsOut


# ---------------------------------------------------------------- scheduler control


class SchedulerStateOut(BaseModel):
    """Reply of start/stop: the flag, how many services' schedules were synced to it, and when the
    flag last changed (null if never set)."""

    is_running: bool
    services: int
    updated_at: str | None = None


def task_out(task: TaskModel) -> TaskOut:
    """A stored task as the API shows it."""
    counts = task.counts.as_dict() if task.counts else {}
    rule = (
        RecipientRule(
            type="tag_based",
            include_tags=list(task.include_tags or []),
            exclude_tags=list(task.exclude_tags or []),
        )
        if task.has_rule
        else None
    )
    return TaskOut(
        task_id=task.task_id,
        user_id=task.user_id,
        name=task.name,
        status=task.status,
        reason=task.reason,
        sender_id=task.sender_id,
        templates=list(task.template_ids),
        contacts=len(task.contact_ids or []),
        recipient_rule=rule,
        scheduled_at=iso(task.scheduled_at) if task.scheduled_at is not None else None,
        quota_reserved=int(task.quota_reserved) if task.quota_reserved is not None else None,
        counts=TaskCountsOut(**{key: int(value) for key, value in counts.items()}),
        created_at=iso(task.created_at),
        updated_at=iso(task.updated_at),
        priority=task.priority or TaskPriority.NORMAL.value,
        max_lateness=int(task.max_lateness) if task.max_lateness is not None else None,
        late_start_confirmed=bool(task.late_start_confirmed),
        began_at=iso(task.began_at) if task.began_at is not None else None,
        send_window=SendWindowOut(**task.send_window.as_dict()) if task.send_window else None,
    )
