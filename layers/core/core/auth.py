"""Who is calling. In AWS the Cognito authorizer puts the ID token's claims on the event; the
local runner puts the same claims there. Tenancy rules live here, not in the routes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from core.errors import DomainError, Forbidden

ADMIN_GROUP = "admins"


class Unauthenticated(DomainError):
    code = "unauthenticated"


@dataclass(frozen=True)
class Caller:
    user_id: str
    groups: frozenset[str]

    @property
    def is_admin(self) -> bool:
        return ADMIN_GROUP in self.groups

    def require_admin(self) -> None:
        if not self.is_admin:
            raise Forbidden("this route is for administrators (group 'admins')")

    def can_see_user(self, user_id: str) -> bool:
        return self.is_admin or self.user_id == user_id


def parse_groups(raw: Any) -> frozenset[str]:
    """API Gateway hands `cognito:groups` over as a string ("admins", "[admins, ops]" or
    "admins,ops") or, from other sources, as a list."""
    if raw is None:
        return frozenset()
    if isinstance(raw, list | tuple | set | frozenset):
        return frozenset(str(group) for group in raw if str(group))
    text = str(raw).strip().strip("[]")
    return frozenset(part for part in text.replace(",", " ").split() if part)


def caller_from_claims(claims: dict[str, Any] | None) -> Caller:
    if not claims or not claims.get("sub"):
        raise Unauthenticated("missing or invalid bearer token")
    return Caller(user_id=str(claims["sub"]), groups=parse_groups(claims.get("cognito:groups")))
