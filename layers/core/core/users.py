"""Users (tenants) and their quota."""

from __future__ import annotations

from pynamodb.exceptions import PutError

from core.auth import Caller
from core.clock import Clock, iso
from core.errors import AlreadyExists, NotFound
from core.models import UserModel
from core.schemas import UserIn, UserOut


def user_out(user: UserModel) -> UserOut:
    return UserOut(
        user_id=user.user_id,
        email=user.email,
        quota=int(user.quota),
        remaining_quota=int(user.remaining_quota),
        service_ids=list(user.service_ids or []),
        created_at=iso(user.created_at),
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
    if not caller.can_see_user(user_id):
        raise NotFound("user", user_id)
    return user_out(load_user(user_id))
