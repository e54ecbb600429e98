"""Users (tenants) and their quota."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pynamodb.exceptions import PutError

from core.api.auth import Caller
from core.api.ownership import load_services
from core.api.schemas import ServiceAssignment, UserIn, UserOut, UserPatch, is_identifier, unique
from core.api.senders import verify_in_regions
from core.clock import Clock, iso
from core.dispatch.control import control_changed
from core.errors import AlreadyExists, NotFound
from core.storage.models import SenderModel, UserModel, update_if


def user_out(user: UserModel) -> UserOut:
    return UserOut(
        user_id=user.user_id,
        email=user.email,
        quota=int(user.quota),
        remaining_quota=int(user.remaining_quota),
        service_ids=list(user.service_ids or []),
        created_at=iso(user.created_at),
        sending_hold=user.sending_hold,
        sending_hold_at=iso(user.sending_hold_at) if user.sending_hold_at is not None else None,
        weight=int(user.weight or 1),
    )


def create_user(caller: Caller, request: UserIn, clock: Clock) -> UserOut:
    caller.require_admin()
    user = UserModel(
        request.user_id,
        email=str(request.email),
        quota=request.quota,
        remaining_quota=request.quota,
        service_ids=[],
        created_at=clock.now(),
        weight=request.weight,
    )
    try:
        user.save(condition=UserModel.user_id.does_not_exist())
    except PutError as error:
        if error.cause_response_code == "ConditionalCheckFailedException":
            raise AlreadyExists(f"user {request.user_id!r} already exists") from error
        raise
    return user_out(user)


def load_user(user_id: str) -> UserModel:
    try:
        return UserModel.get(user_id, consistent_read=True)
    except UserModel.DoesNotExist as error:
        raise NotFound("user", user_id) from error


def get_user(caller: Caller, user_id: str) -> UserOut:
    # An id no user can have is not read at all (DynamoDB would refuse an over-long key).
    if not is_identifier(user_id) or not caller.can_see_user(user_id):
        raise NotFound("user", user_id)
    return user_out(load_user(user_id))


def update_user(caller: Caller, user_id: str, request: UserPatch) -> UserOut:
    """Changes only the fields given (admin only): the weight. Sending dispatchers read weights
    when they reload, which the control change makes them do within a second
    (core.dispatch.fairness)."""
    caller.require_admin()
    if not is_identifier(user_id):
        raise NotFound("user", user_id)
    if "weight" not in request.model_fields_set:  # nothing to change
        return user_out(load_user(user_id))
    user = UserModel(user_id)
    # One conditional UpdateItem: an unknown id is a 404 and never creates an item.
    if not update_if(user, [UserModel.weight.set(request.weight)], UserModel.user_id.exists()):
        raise NotFound("user", user_id)
    control_changed()
    return user_out(user)


def assign_services(
    caller: Caller, user_id: str, request: ServiceAssignment, sesv2_in: Callable[[str], Any] | None = None
) -> UserOut:
    """Replace the set of email services a user may send through (admin only). Every id must name
    an existing service; duplicates collapse, first-seen order is kept. The user's senders are
    verified with SES in each region of those services before the set is saved (a service sends
    from its own region's account)."""
    caller.require_admin()
    if not is_identifier(user_id):
        raise NotFound("user", user_id)
    load_user(user_id)
    service_ids = unique(request.service_ids)
    existing = load_services(service_ids)
    for position, service_id in enumerate(request.service_ids):
        if service_id not in existing:
            raise NotFound("email service", service_id, field=f"service_ids[{position}]")
    if sesv2_in is not None:
        senders = [sender.email for sender in SenderModel.query(user_id)]
        verify_in_regions(senders, {service.region for service in existing.values()}, sesv2_in)
    user = UserModel(user_id)
    if not update_if(user, [UserModel.service_ids.set(service_ids)], UserModel.user_id.exists()):
        raise NotFound("user", user_id)
    return user_out(user)
