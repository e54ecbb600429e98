"""One-click unsubscribe (RFC 8058): the signed link in every email lands here.

The address goes on the tenant's suppression list with the reason `unsubscribed` through
core.suppressions, the one code path for every suppression: the contact becomes `unsubscribed` (a
bounced or complained contact keeps its stronger status), so no later plan includes it, and the
queued subtasks campaigns already hold for it move `queued -> suppressed` (conditional: a
dispatcher's claim and this move race safely, exactly one wins) with their quota back to the user."""

from __future__ import annotations

from dataclasses import dataclass

from core.clock import Clock
from core.mail.unsubscribe import UnsubscribeClaim, verify_unsubscribe
from core.states import SuppressionReason
from core.storage.ids import subtask_partition
from core.storage.models import ContactModel, SubtaskModel
from core.suppressions import suppress


@dataclass(frozen=True)
class UnsubscribeResult:
    unsubscribed: bool  # False when the contact was already unsubscribed (or is gone)
    suppressed_subtasks: int


def _address_of(claim: UnsubscribeClaim) -> str | None:
    """The address the link was sent to: its contact's, or (a contact is never deleted, but the
    link may outlive it) the snapshot on the subtask the email came from."""
    try:
        return ContactModel.get(claim.user_id, claim.contact_id, consistent_read=True).email
    except ContactModel.DoesNotExist:
        pass
    try:
        partition = subtask_partition(claim.task_id, claim.contact_id)
        return SubtaskModel.get(partition, claim.contact_id, consistent_read=True).email
    except SubtaskModel.DoesNotExist:
        return None


def unsubscribe(token: str, signing_key: str, clock: Clock) -> UnsubscribeResult:
    claim = verify_unsubscribe(signing_key, token)
    email = _address_of(claim)
    if email is None:
        return UnsubscribeResult(unsubscribed=False, suppressed_subtasks=0)
    outcome = suppress(claim.user_id, email, SuppressionReason.UNSUBSCRIBED, clock.now())
    return UnsubscribeResult(unsubscribed=outcome.contact_changed, suppressed_subtasks=outcome.suppressed_subtasks)
