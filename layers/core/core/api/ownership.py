"""A caller's items, loaded with their ownership checked: what every API feature needs about the
others (a task's sender and contacts, a user's services), so features do not import each other."""

from __future__ import annotations

from collections.abc import Iterable

from core.api.auth import Caller
from core.api.schemas import is_identifier, unique
from core.errors import Forbidden, NotFound
from core.storage.models import ContactModel, EmailServiceModel, SenderModel, TaskModel, UserModel

_BATCH_GET_LIMIT = 100  # keys per BatchGetItem


def tenant_user(caller: Caller) -> UserModel:
    """The caller's user record. Only users the administrators created may create anything: a
    token without one is 403."""
    try:
        return UserModel.get(caller.user_id, consistent_read=True)
    except UserModel.DoesNotExist as error:
        raise Forbidden("you have no user record; ask an administrator to create one") from error


def require_tenant(caller: Caller) -> None:
    tenant_user(caller)


def load_contacts(user_id: str, contact_ids: Iterable[str]) -> dict[str, ContactModel]:
    """The user's contacts among `contact_ids`, by id (BatchGet, 100 keys a call). Ids the user
    does not have, another user's included, are simply absent: the caller decides what that means."""
    wanted = unique([contact_id for contact_id in contact_ids if is_identifier(contact_id)])
    found: dict[str, ContactModel] = {}
    for start in range(0, len(wanted), _BATCH_GET_LIMIT):
        keys = [(user_id, contact_id) for contact_id in wanted[start : start + _BATCH_GET_LIMIT]]
        for contact in ContactModel.batch_get(keys, consistent_read=True):
            found[contact.contact_id] = contact
    return found


def load_sender(user_id: str, sender_id: str) -> SenderModel:
    """The user's sender. Another user's sender is NotFound like an unknown one (field `sender_id`)."""
    if not is_identifier(sender_id):
        raise NotFound("sender", sender_id, field="sender_id")
    try:
        return SenderModel.get(user_id, sender_id, consistent_read=True)
    except SenderModel.DoesNotExist as error:
        raise NotFound("sender", sender_id, field="sender_id") from error


def load_services(service_ids: Iterable[str]) -> dict[str, EmailServiceModel]:
    """The services that exist among `service_ids`, by id (BatchGet, 100 keys a call)."""
    wanted = list(dict.fromkeys(service_id for service_id in service_ids if is_identifier(service_id)))
    found: dict[str, EmailServiceModel] = {}
    for start in range(0, len(wanted), _BATCH_GET_LIMIT):
        for service in EmailServiceModel.batch_get(wanted[start : start + _BATCH_GET_LIMIT]):
            found[service.service_id] = service
    return found


def load_task(caller: Caller, task_id: str) -> TaskModel:
    try:
        task = TaskModel.get(task_id, consistent_read=True)
    except TaskModel.DoesNotExist as error:
        raise NotFound("task", task_id) from error
    if not (caller.is_admin or task.user_id == caller.user_id):
        raise NotFound("task", task_id)
    return task
