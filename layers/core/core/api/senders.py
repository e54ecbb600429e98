"""Senders: the from-addresses (and display names) a user's campaigns go out as.

An address and its domain belong to one tenant (SenderIdentitiesTable): SES identities are per
account, so without this any tenant could mail as another tenant's verified address or domain.
The first tenant to register an address of a domain owns the domain; another tenant gets 409.
Public mailbox domains (gmail.com, ...) are the exception: there only the address is owned.
Claims are conditional puts in the same transaction as the sender, so two tenants racing for
one domain cannot both win. Creating a sender makes SES mail a verification link, so it is
rate limited per user (429 with Retry-After), and a caller without a user record creates
nothing (403)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from pynamodb.exceptions import TransactWriteError
from pynamodb.transactions import TransactWrite

from core.api.auth import Caller
from core.api.ownership import load_services, tenant_user
from core.api.paging import decode_cursor, encode_cursor
from core.api.rate_limits import take_sender_creation
from core.api.schemas import SenderIn, SenderOut, SenderPage
from core.clock import Clock, iso
from core.errors import Conflict, ServiceUnavailable
from core.storage.ids import new_id
from core.storage.models import SenderIdentityModel, SenderModel, transaction_connection

SENDER_ID_PATTERN = r"snd_[0-9a-f]{24}"
MAX_SENDERS_PAGE = 1000
# Mailbox providers whose addresses belong to their users one by one: owning one address there
# says nothing about the domain.
PUBLIC_MAILBOX_DOMAINS = frozenset(
    {"gmail.com", "googlemail.com", "yahoo.com", "ymail.com", "rocketmail.com", "aol.com", "outlook.com"}
    | {"hotmail.com", "live.com", "msn.com", "icloud.com", "me.com", "mac.com", "proton.me", "protonmail.com"}
    | {"gmx.com", "gmx.de", "gmx.net", "web.de", "mail.com", "yandex.ru", "yandex.com", "zoho.com", "qq.com"}
    | {"163.com", "126.com", "naver.com", "mail.ru", "fastmail.com", "hey.com"}
)


class SenderTaken(Conflict):
    code = "sender_taken"


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


def verify_in_regions(
    addresses: Iterable[str], regions: Iterable[str], sesv2_in: Callable[[str], Any], *, besides: str | None = None
) -> None:
    """Identities are per SES region, and a service sends through the account of its own region:
    each address is verified in every region of the services its tenant may use (`besides`: a
    region already done)."""
    for region in sorted(set(regions) - {besides}):
        client = sesv2_in(region)
        for address in addresses:
            request_verification(client, address)


def create_sender(
    caller: Caller,
    request: SenderIn,
    clock: Clock,
    ses: Any,
    creations_per_hour: int = 20,
    sesv2_in: Callable[[str], Any] | None = None,
) -> SenderOut:
    address = str(request.email)
    claims = identity_claims(address)
    user = tenant_user(caller)
    _check_unclaimed(caller.user_id, claims)
    take_sender_creation(caller.user_id, clock.now(), creations_per_hour)
    request_verification(ses, address)
    if sesv2_in is not None:
        regions = [service.region for service in load_services(user.service_ids or []).values()]
        verify_in_regions([address], regions, sesv2_in, besides=ses.meta.region_name)
    now = clock.now()
    sender = SenderModel(caller.user_id, new_id("snd"), email=address, name=request.name, created_at=now)
    try:
        with TransactWrite(connection=transaction_connection()) as transaction:
            for identity in claims:
                transaction.save(
                    SenderIdentityModel(identity, user_id=caller.user_id, created_at=now),
                    condition=SenderIdentityModel.identity.does_not_exist()
                    | (SenderIdentityModel.user_id == caller.user_id),
                )
            transaction.save(sender, condition=SenderModel.sender_id.does_not_exist())
    except TransactWriteError as error:
        if error.cause_response_code == "TransactionCanceledException":
            _check_unclaimed(caller.user_id, claims)  # names what another tenant took meanwhile
        raise ServiceUnavailable("the sender could not be saved; retry") from error
    return sender_out(sender)


def identity_claims(address: str) -> list[str]:
    """The identity keys an address claims: itself, and its domain unless the domain is a public
    mailbox provider. Case-insensitive (providers treat local parts so; IDNA for the domain)."""
    local, _, domain = address.rpartition("@")
    domain = domain.encode("idna").decode("ascii").lower()
    claims = [f"address:{local.lower()}@{domain}"]
    if domain not in PUBLIC_MAILBOX_DOMAINS:
        claims.append(f"domain:{domain}")
    return claims


def _check_unclaimed(user_id: str, claims: list[str]) -> None:
    for claim in SenderIdentityModel.batch_get(claims, attributes_to_get=["identity", "user_id"]):
        if claim.user_id != user_id:
            kind, _, value = claim.identity.partition(":")
            raise SenderTaken(
                f"the {kind} {value!r} belongs to another account", [{"field": "email", "reason": f"{kind}_taken"}]
            )


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
