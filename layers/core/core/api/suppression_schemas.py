"""Input and output shapes of the suppression list routes (GET/POST /api/suppressions, DELETE
/api/suppressions/{email}, GET /api/suppressions/export)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, Field, StringConstraints

from core.api.schemas import EmailAddress, StrictModel
from core.mail.header_rules import check_header_text

MAX_SUPPRESSIONS_PER_REQUEST = 1000
DEFAULT_SUPPRESSIONS_PAGE = 100
MAX_SUPPRESSIONS_PAGE = 1000
# Rows of one CSV export response (about 100 bytes each, under Lambda's 6 MB reply); a longer list
# continues from the `X-Next-Cursor` the response carries.
MAX_EXPORT_ROWS = 40_000

# What the API lists and filters by: every reason. What it adds: `manual` only (bounced and
# complained come from SES, unsubscribed from the recipient's link: a tenant cannot claim those).
ListedReason = Literal["bounced", "complained", "unsubscribed", "manual"]
Detail = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=500), AfterValidator(check_header_text)
]


class SuppressionsIn(StrictModel):
    emails: list[EmailAddress] = Field(min_length=1, max_length=MAX_SUPPRESSIONS_PER_REQUEST)
    reason: Literal["manual"] = "manual"
    detail: Detail | None = None  # the tenant's note, shown in the list and the export


class SuppressionResult(BaseModel):
    email: str
    contact_id: str
    added: bool  # false: the address was on the list already (its reason is kept when stronger)
    reason: str  # the entry's reason now
    suppressed_subtasks: int  # queued emails of open tasks skipped (and refunded) by this request


class SuppressionsAdded(BaseModel):
    results: list[SuppressionResult]  # one per distinct address, in first-seen order


class SuppressionOut(BaseModel):
    email: str
    contact_id: str
    reason: str
    detail: str | None = None
    created_at: str
    updated_at: str | None = None  # when a stronger reason replaced the first


class SuppressionPage(BaseModel):
    suppressions: list[SuppressionOut]  # in contact-id order (a hash of the address)
    cursor: str | None = None


class SuppressionRemoved(BaseModel):
    email: str
    contact_id: str
    removed: bool
