"""Senders: the from-addresses (and display names) a user's campaigns go out as."""

from __future__ import annotations

from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from core.auth import Caller
from core.clock import Clock, iso
from core.errors import NotFound, ServiceUnavailable
from core.ids import new_id
from core.models import SenderModel
from core.paging import decode_cursor, encode_cursor
from core.schemas import SenderIn, SenderOut, SenderPage, is_identifier

SENDER_ID_PATTERN = r"snd_[0-9a-f]{24}"
MAX_SENDERS_PAGE = 1000


def sender_out(sender: SenderModel) -> SenderOut:
    return SenderOut(
        sender_id=sender.sender_id,
        email=sender.email,
        name=sender.name,
        created_at=iso(sender.created_at),
    )


def request_verification(ses: Any, address: str) -> None:
    """Asks SES to verify the address as a sending identity (SES mails it a confirmation link; until
    it is followed, sends from it are rejected unless its domain is verified). An identity that
    already exists (verified or pending) is left as it is."""
    try:
        ses.create_email_identity(EmailIdentity=address)
    except ses.exceptions.AlreadyExistsException:
        return
    except (BotoCoreError, ClientError) as error:
        raise ServiceUnavailable(f"SES could not start verifying {address!r}; retry") from error


def create_sender(caller: Caller, request: SenderIn, clock: Clock, ses: Any) -> SenderOut:
    request_verification(ses, str(request.email))
    sender = SenderModel(
        caller.user_id,
        new_id("snd"),
        email=str(request.email),
        name=request.name,
        created_at=clock.now(),
    )
    sender.save(condition=SenderModel.sender_id.does_not_exist())
    return sender_out(sender)


def list_senders(caller: Caller, cursor: str | None = None, limit: int = MAX_SENDERS_PAGE) -> SenderPage:
    after = decode_cursor(cursor, SENDER_ID_PATTERN)
    condition = SenderModel.sender_id > after if after else None
    senders = list(SenderModel.query(caller.user_id, range_key_condition=condition, limit=limit + 1))
    more = len(senders) > limit
    senders = senders[:limit]
    return SenderPage(
        senders=[sender_out(sender) for sender in senders],
        cursor=encode_cursor(senders[-1].sender_id) if more else None,
    )


def load_sender(user_id: str, sender_id: str) -> SenderModel:
    """The user's sender. Another user's sender is NotFound like an unknown one (field `sender_id`)."""
    if not is_identifier(sender_id):
        raise NotFound("sender", sender_id, field="sender_id")
    try:
        return SenderModel.get(user_id, sender_id, consistent_read=True)
    except SenderModel.DoesNotExist as error:
        raise NotFound("sender", sender_id, field="sender_id") from error
