"""Input and output shapes of the API (pydantic). Limits are stated here, once, and enforced by
validation before anything is written."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, EmailStr, Field, StringConstraints

MAX_CONTACTS_PER_IMPORT = 1000
MAX_TAGS_PER_CONTACT = 50
MAX_ATTRIBUTES_PER_CONTACT = 50
MAX_EXPLICIT_CONTACTS_PER_TASK = 5000
MAX_TEMPLATES_PER_TASK = 10
MAX_TAGS_PER_RULE = 20
MAX_SERVICES_PER_USER = 50
MAX_TEMPLATE_BODY_CHARS = 512_000
MAX_SUBJECT_CHARS = 998  # RFC 5322 line length

_ID_PATTERN = r"^[A-Za-z0-9_.:@-]{1,128}$"


def _no_line_breaks(value: str) -> str:
    # Header injection: a CR or LF in a header value would let a caller add headers.
    if "\r" in value or "\n" in value:
        raise ValueError("must not contain line breaks (CR or LF)")
    return value


HeaderText = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1), AfterValidator(_no_line_breaks)
]
Identifier = Annotated[str, StringConstraints(pattern=_ID_PATTERN)]
Tag = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")]
Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)


class ErrorBody(BaseModel):
    error: str
    message: str
    details: list[dict[str, Any]] = []


def unique(values: list[Any]) -> list[Any]:
    """Order-preserving de-duplication."""
    return list(dict.fromkeys(values))


class UserIn(StrictModel):
    user_id: Identifier
    email: EmailStr
    quota: int = Field(ge=0, le=10_000_000_000)


class UserOut(BaseModel):
    user_id: str
    email: str
    quota: int
    remaining_quota: int
    service_ids: list[str]
    created_at: str


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
    scheduled_at: AwareDatetime | None = None


class TaskCountsOut(BaseModel):
    total: int = 0
    queued: int = 0
    sending: int = 0
    sent: int = 0
    failed: int = 0
    suppressed: int = 0
    unknown: int = 0
    bounced: int = 0
    complained: int = 0
    cancelled: int = 0


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


class TaskCreated(BaseModel):
    task_id: str
    status: str


class TaskPage(BaseModel):
    tasks: list[TaskOut]
    cursor: str | None = None
