"""Domain errors. Plain classes; the API maps them to HTTP in exactly one place."""

from __future__ import annotations

from typing import Any


class DomainError(Exception):
    code = "error"

    def __init__(self, message: str, details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or []


class NotFound(DomainError):
    """Also raised for another tenant's data: existence is never leaked."""

    code = "not_found"

    def __init__(self, kind: str, ident: str, field: str | None = None) -> None:
        details = [{"field": field, "reason": f"unknown {kind} id"}] if field else []
        super().__init__(f"{kind} {ident!r} not found", details)
        self.kind = kind


class Forbidden(DomainError):
    code = "forbidden"


class Conflict(DomainError):
    code = "conflict"


class AlreadyExists(Conflict):
    code = "already_exists"


class InsufficientQuota(Conflict):
    code = "insufficient_quota"


class InvalidInput(DomainError):
    """Input that passed the schema but breaks a domain rule; names the field."""

    code = "invalid_input"

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}", [{"field": field, "reason": reason}])
        self.field = field


class InvalidState(Conflict):
    code = "invalid_state"


class ServiceUnavailable(DomainError):
    """A dependency (queue, table) refused the request; the caller may retry."""

    code = "service_unavailable"


class TooManyRequests(DomainError):
    """A per-user rate limit was hit; `retry_after` seconds until the next attempt can succeed."""

    code = "too_many_requests"

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = max(1, int(retry_after))
