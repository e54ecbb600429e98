"""Input and output of a test send (`POST /api/templates/{template_id}/test-send`, core.api.test_sends),
with the shared types of core.api.schemas."""

from __future__ import annotations

from pydantic import BaseModel, Field

from core.api.schemas import EmailAddress, Identifier, StrictModel


class TestSendIn(StrictModel):
    """One address to send the template to; the optional ids pick the contact whose fields render it
    (default: a sample contact), the sender (default: the caller's first) and the service (default:
    the first of the caller's services that can send now)."""

    __test__ = False  # not a pytest class, whatever imports it

    email: EmailAddress
    contact_id: Identifier | None = None
    sender_id: Identifier | None = None
    service_id: Identifier | None = None


class TestSendOut(BaseModel):
    __test__ = False

    message_id: str = Field(description="SES's message id")
    service_id: str = Field(description="the service that sent it (its daily quota counts it)")
    sent_at: str = Field(description="when SES accepted it, ISO 8601 UTC")
