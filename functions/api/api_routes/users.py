from __future__ import annotations

from api_context import current_caller, deps
from aws_lambda_powertools.event_handler.api_gateway import Router

from core import users
from core.schemas import ServiceAssignment, UserIn, UserOut

router = Router()


@router.post("/api/users")
def create_user(request: UserIn) -> tuple[UserOut, int]:
    return users.create_user(current_caller(router), request, deps().clock), 201


@router.get("/api/users/<user_id>")
def get_user(user_id: str) -> UserOut:
    return users.get_user(current_caller(router), user_id)


@router.put("/api/users/<user_id>/services")
def assign_services(user_id: str, request: ServiceAssignment) -> UserOut:
    return users.assign_services(current_caller(router), user_id, request)
