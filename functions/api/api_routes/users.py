from __future__ import annotations

from api_context import current_caller, deps
from api_responses import AUTH, BODY, CREATE, documented
from aws_lambda_powertools.event_handler.api_gateway import Router

from core.api import users
from core.api.schemas import ServiceAssignment, UserIn, UserOut, UserPatch

router = Router()


@router.post("/api/users", responses=documented(201, CREATE, 403))
def create_user(request: UserIn) -> tuple[UserOut, int]:
    return users.create_user(current_caller(router), request, deps().clock), 201


@router.get("/api/users/<user_id>", responses=documented(200, AUTH, 404))
def get_user(user_id: str) -> UserOut:
    return users.get_user(current_caller(router), user_id)


@router.patch("/api/users/<user_id>", responses=documented(200, BODY, 403, 404))
def update_user(user_id: str, request: UserPatch) -> UserOut:
    return users.update_user(current_caller(router), user_id, request)


@router.put("/api/users/<user_id>/services", responses=documented(200, BODY, 403, 404))
def assign_services(user_id: str, request: ServiceAssignment) -> UserOut:
    return users.assign_services(current_caller(router), user_id, request, deps().ses_clients.sesv2)
