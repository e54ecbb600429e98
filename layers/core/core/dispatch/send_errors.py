"""Which class a failed SES v2 `SendEmail` belongs to: one table, `RULES`. What each class then
does to the subtask, its quota unit and the service is the outcome table (core.dispatch.outcomes):
THROTTLED, DAILY_QUOTA, TRANSIENT, PERMANENT, ACCOUNT.

The first rule that matches wins. Rules look at the SES error's message text first (SES reports
"Daily message quota exceeded" and "Maximum sending rate exceeded" under more than one code; see
docs research aws-facts.md, "Errors and retryability"), then its code, then its HTTP status, then,
for errors that never reached SES, the botocore exception type.

Only botocore errors are classified: `ClientError` (SES answered with an error) and `BotoCoreError`
(the request failed on the way: timeouts, connections, credentials, parameters). Anything else is a
bug in our own code, raised possibly *after* SES accepted the message; calling it a send failure
could send the email twice or fail a recipient who got it. `classify_send_error` raises TypeError
for it, and the caller lets it propagate (a subtask left `sending` becomes `unknown`, never resent).

`SendError.may_have_been_sent` marks the errors after which SES may have accepted the message even
though we saw a failure: the request left this process and the reply was lost (read timeout,
connection closed mid-reply). They are TRANSIENT like the issue asks, but a caller that holds the
exactly-once line strictly should record such a send as `unknown` instead of retrying it. (Give the
SES client `retries={"max_attempts": 1}` too: botocore's own retry would resend on a read timeout.)"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    CredentialRetrievalError,
    HTTPClientError,
    NoCredentialsError,
    ParamValidationError,
    PartialCredentialsError,
    UnknownCredentialError,
    ValidationError,
)
from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)


class SendErrorClass(StrEnum):
    THROTTLED = "throttled"
    DAILY_QUOTA = "daily_quota"
    TRANSIENT = "transient"
    PERMANENT = "permanent"
    ACCOUNT = "account"


@dataclass(frozen=True)
class SendError:
    error_class: SendErrorClass
    code: str  # SES error code, or the botocore exception's class name
    message: str
    http_status: int | None = None
    may_have_been_sent: bool = False
    reason: str = ""  # the matching rule's `why`: for logs and the failed-recipient ledger


@dataclass(frozen=True)
class _Facts:
    code: str
    message: str  # casefolded for matching
    status: int | None
    error: BaseException


@dataclass(frozen=True)
class Rule:
    error_class: SendErrorClass
    why: str
    matches: Callable[[_Facts], bool]
    may_have_been_sent: bool = False


def _message_has(text: str) -> Callable[[_Facts], bool]:
    needle = text.casefold()
    return lambda facts: needle in facts.message


def _code_in(*codes: str) -> Callable[[_Facts], bool]:
    wanted = frozenset(codes)
    return lambda facts: facts.code in wanted


def _status_in(low: int, high: int) -> Callable[[_Facts], bool]:
    return lambda facts: facts.status is not None and low <= facts.status <= high


def _raised(*types: type[BaseException]) -> Callable[[_Facts], bool]:
    return lambda facts: isinstance(facts.error, types)


def _client_error(facts: _Facts) -> bool:
    return isinstance(facts.error, ClientError)


def _anything(facts: _Facts) -> bool:
    return True


_C = SendErrorClass

RULES: tuple[Rule, ...] = (
    # -- by message text, whatever the code (SES words both under Throttling and other codes)
    Rule(_C.DAILY_QUOTA, "24-hour sending quota used up", _message_has("Daily message quota exceeded")),
    Rule(_C.THROTTLED, "sending rate above the account's maximum", _message_has("Maximum sending rate exceeded")),
    # -- by SES error code
    Rule(
        _C.THROTTLED,
        "request throttled (v2 429, v1/common Throttling)",
        _code_in("TooManyRequestsException", "ThrottlingException", "Throttling"),
    ),
    Rule(
        _C.ACCOUNT,
        "the account or service cannot send at all: paused, suspended, MAIL FROM unverified",
        _code_in(
            "SendingPausedException",
            "AccountSuspendedException",
            "MailFromDomainNotVerifiedException",
            "AccountSendingPausedException",  # v1 spelling
            "ConfigurationSetSendingPausedException",  # v1 spelling
        ),
    ),
    # LimitExceededException is ACCOUNT: for SendEmail the API reference describes it as "too many
    # instances of the specified resource type", a limit of the account, not of this message nor of
    # this second. Failing the recipient would be wrong (the message is fine) and retrying it at once
    # would hit the same limit; stopping the service until the health check sees it healthy again
    # keeps every recipient queued and the reason visible. When it carries the daily-quota text
    # (aws-facts.md is unsure which v2 code does), the message rule above has already made it
    # DAILY_QUOTA.
    Rule(_C.ACCOUNT, "an account resource limit", _code_in("LimitExceededException")),
    Rule(
        _C.TRANSIENT,
        "SES-side failure",
        _code_in(
            "InternalFailure",
            "InternalServerError",
            "InternalError",
            "ServiceUnavailable",
            "ServiceUnavailableException",
            "RequestTimeout",
            "RequestTimeoutException",
        ),
    ),
    Rule(
        _C.PERMANENT,
        "this message or address will not be accepted as it is",
        _code_in("MessageRejected", "BadRequestException", "NotFoundException", "InvalidParameterValue"),
    ),
    # -- by HTTP status, for codes not listed above
    Rule(_C.THROTTLED, "HTTP 429", _status_in(429, 429)),
    Rule(_C.TRANSIENT, "HTTP 5xx", _status_in(500, 599)),
    Rule(_C.PERMANENT, "other HTTP 4xx client error", _status_in(400, 499)),
    # -- errors that never got an answer from SES
    Rule(
        _C.TRANSIENT,
        "request sent, reply lost (read timeout, connection closed): SES may have accepted it",
        _raised(HTTPClientError),  # ReadTimeoutError, ConnectionClosedError, ResponseStreamingError
        may_have_been_sent=True,
    ),
    Rule(
        _C.TRANSIENT,
        "could not connect: the request never reached SES",
        _raised(BotoConnectionError),  # EndpointConnectionError, ConnectTimeoutError, ProxyConnectionError, SSLError
    ),
    Rule(
        _C.ACCOUNT,
        "no usable credentials for this service's account",
        _raised(NoCredentialsError, PartialCredentialsError, CredentialRetrievalError, UnknownCredentialError),
    ),
    Rule(
        _C.PERMANENT,
        "the request for this message is invalid before it is sent",
        _raised(ParamValidationError, ValidationError),
    ),
    # -- fallbacks: an answer we do not know (no 4xx/5xx status), or another botocore failure
    Rule(_C.TRANSIENT, "unrecognised SES error: retried, bounded by max_retries", _client_error),
    Rule(_C.TRANSIENT, "other botocore failure: retried, bounded by max_retries", _anything),
)


def _facts(error: ClientError | BotoCoreError) -> _Facts:
    if isinstance(error, ClientError):
        response: dict[str, Any] = error.response or {}
        details = response.get("Error") or {}
        status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
        code = str(details.get("Code") or "")
        message = str(details.get("Message") or "")
        return _Facts(code=code, message=message, status=int(status) if status else None, error=error)
    return _Facts(code=type(error).__name__, message=str(error), status=None, error=error)


def classify_send_error(error: BaseException) -> SendError:
    """The class of a failed `SendEmail` (see the table above). Raises TypeError for anything that is
    not a botocore ClientError or BotoCoreError: that is our bug, not a send failure."""
    if not isinstance(error, ClientError | BotoCoreError):
        raise TypeError(f"not an SES/botocore error: {type(error).__name__}: {error}") from error
    facts = _facts(error)
    matching = _Facts(code=facts.code, message=facts.message.casefold(), status=facts.status, error=error)
    rule = next(rule for rule in RULES if rule.matches(matching))
    return SendError(
        error_class=rule.error_class,
        code=facts.code,
        message=facts.message,
        http_status=facts.status,
        may_have_been_sent=rule.may_have_been_sent,
        reason=rule.why,
    )
