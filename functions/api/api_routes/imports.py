from __future__ import annotations

from typing import Annotated

from api_context import current_caller, deps
from api_responses import AUTH, CREATE, documented, link
from aws_lambda_powertools.event_handler.api_gateway import Router
from aws_lambda_powertools.event_handler.openapi.params import Body, Query

from core.api import imports
from core.api.import_schemas import (
    DEFAULT_IMPORTS_PAGE,
    MAX_IMPORTS_PAGE,
    ImportCreated,
    ImportIn,
    ImportOut,
    ImportPage,
)
from core.audience.uploads import Uploads

router = Router()

_NEW_IMPORT = {"GetImport": link("GET", "/api/imports/{import_id}", import_id="$response.body#/import_id")}


def _import_deps() -> imports.ImportApiDeps:
    api = deps()
    return imports.ImportApiDeps(clock=api.clock, uploads=Uploads(api.s3, api.settings.import_bucket))


@router.post("/api/imports", responses=documented(201, CREATE, 403, links=_NEW_IMPORT))
def create_import(request: Annotated[ImportIn | None, Body()] = None) -> tuple[ImportCreated, int]:
    return imports.create_import(current_caller(router), request, _import_deps()), 201


@router.get("/api/imports", responses=documented(200, AUTH))
def list_imports(
    cursor: Annotated[str | None, Query(max_length=512)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_IMPORTS_PAGE)] = DEFAULT_IMPORTS_PAGE,
) -> ImportPage:
    return imports.list_imports(current_caller(router), cursor, limit, _import_deps())


@router.get("/api/imports/<import_id>", responses=documented(200, AUTH, 404))
def get_import(import_id: str) -> ImportOut:
    return imports.get_import(current_caller(router), import_id, _import_deps())
