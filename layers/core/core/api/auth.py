"""Who is calling. In AWS the Cognito authorizer puts the ID token's claims on the event; the
local runner puts the same claims there. Tenancy rules live here, not in the routes."""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

from core.errors import DomainError, Forbidden

ADMIN_GROUP = "admins"
MAX_TOKEN_CHARS = 16_384


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
    """Group names exactly as given. A list is taken as it is. A string is what an authorizer
    made of the list: one name, or the bracketed, space-separated form ("[admins ops]"). Cognito
    group names may contain commas but never whitespace, so commas never split: a group named
    "x,admins" is not the group "admins"."""
    if raw is None:
        return frozenset()
    if isinstance(raw, list | tuple | set | frozenset):
        return frozenset(str(group) for group in raw if str(group))
    text = str(raw).strip()
    if text.startswith("[") and text.endswith("]"):
        return frozenset(text[1:-1].split())
    return frozenset([text]) if text else frozenset()


def token_claims(authorization: str | None) -> dict[str, Any] | None:
    """The payload of the bearer JWT in the Authorization header, unverified: API Gateway's
    authorizer verified it before the function ran, and the event's claims come from it. Its
    `cognito:groups` is still a real JSON list there, so group names need no guessing."""
    token = (authorization or "").strip()
    if token[:7].lower() == "bearer ":
        token = token[7:].strip()
    parts = token.split(".")
    if len(parts) != 3 or len(token) > MAX_TOKEN_CHARS:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, binascii.Error):
        return None
    return payload if isinstance(payload, dict) else None


def caller_from_claims(claims: dict[str, Any] | None, authorization: str | None = None) -> Caller:
    if not claims or not claims.get("sub"):
        raise Unauthenticated("missing or invalid bearer token")
    user_id = str(claims["sub"])
    token = token_claims(authorization)
    if token is not None and str(token.get("sub")) == user_id and isinstance(token.get("cognito:groups"), list):
        return Caller(user_id=user_id, groups=parse_groups(token["cognito:groups"]))
    return Caller(user_id=user_id, groups=parse_groups(claims.get("cognito:groups")))
