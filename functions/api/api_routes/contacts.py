from __future__ import annotations

from typing import Annotated

from api_context import current_caller, deps
from api_responses import AUTH, CREATE, documented
from aws_lambda_powertools.event_handler.api_gateway import Router
from aws_lambda_powertools.event_handler.openapi.params import Query

from core.api import contacts
from core.api.schemas import DEFAULT_PAGE_SIZE, MAX_CONTACTS_PAGE, ContactImport, ContactImported, ContactPage

router = Router()


@router.post("/api/contacts", responses=documented(200, CREATE, 403))
def import_contacts(request: ContactImport) -> ContactImported:
    return contacts.import_contacts(current_caller(router), request, deps().clock)


@router.get("/api/contacts", responses=documented(200, AUTH))
def list_contacts(
    tag: Annotated[str | None, Query(pattern=r"^([A-Za-z0-9_.:-]{1,64})?$")] = None,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_CONTACTS_PAGE)] = DEFAULT_PAGE_SIZE,
) -> ContactPage:
    return contacts.list_contacts(current_caller(router), tag or None, cursor, limit)
