from __future__ import annotations

from api_context import current_caller, deps
from api_responses import AUTH, BODY, CREATE, documented
from aws_lambda_powertools.event_handler.api_gateway import Router

from core import service_health
from core.api import email_services
from core.api.schemas import ServiceIn, ServiceList, ServiceOut, ServicePatch

router = Router()


def _service_deps() -> email_services.ServiceDeps:
    api = deps()
    return email_services.ServiceDeps(
        clock=api.clock, scheduler=api.scheduler, schedules=api.schedules, wake=api.wake, ses_clients=api.ses_clients
    )


@router.post("/api/services", responses=documented(201, CREATE, 403))
def create_service(request: ServiceIn) -> tuple[ServiceOut, int]:
    return email_services.create_service(current_caller(router), request, _service_deps()), 201


@router.get("/api/services", responses=documented(200, AUTH))
def list_services() -> ServiceList:
    return email_services.list_services(current_caller(router), deps().clock)


@router.patch("/api/services/<service_id>", responses=documented(200, BODY, 403, 404))
def update_service(service_id: str, request: ServicePatch) -> ServiceOut:
    return email_services.update_service(current_caller(router), service_id, request, _service_deps())


@router.post("/api/services/<service_id>/check", responses=documented(200, AUTH, 403, 404))
def check_service(service_id: str) -> service_health.ServiceHealthOut:
    api = deps()
    health = service_health.HealthDeps(clock=api.clock, clients=api.ses_clients, wake=api.wake)
    return service_health.check_service_now(current_caller(router), service_id, health)
