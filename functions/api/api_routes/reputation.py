from __future__ import annotations

from api_context import current_caller, deps
from api_responses import AUTH, documented
from aws_lambda_powertools.event_handler.api_gateway import Router

from core.api import reputation
from core.api.reputation_schemas import ServiceSendingResumedOut, UserSendingResumedOut

router = Router()


def _resume_deps() -> reputation.ResumeDeps:
    api = deps()
    return reputation.ResumeDeps(clock=api.clock, wake=api.wake)


@router.post("/api/users/<user_id>/resume-sending", responses=documented(200, AUTH, 403, 404, 409))
def resume_user_sending(user_id: str) -> UserSendingResumedOut:
    return reputation.resume_user_sending(current_caller(router), user_id, _resume_deps())


@router.post("/api/services/<service_id>/resume-sending", responses=documented(200, AUTH, 403, 404, 409))
def resume_service_sending(service_id: str) -> ServiceSendingResumedOut:
    return reputation.resume_service_sending(current_caller(router), service_id, _resume_deps())
