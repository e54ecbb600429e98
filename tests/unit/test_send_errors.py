"""SES v2 SendEmail failures, classified by the one table in core.dispatch.send_errors: hand-built
ClientErrors, the exceptions boto3 itself raises (Stubber, event hooks), transport failures, and
anything that is not a botocore error (refused: it is our bug, not a send failure)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import botocore.session
import pytest
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ParamValidationError,
    ProxyConnectionError,
    ReadTimeoutError,
    ResponseStreamingError,
    WaiterError,
)
from botocore.stub import Stubber

from core.dispatch.send_errors import RULES, SendError, SendErrorClass, classify_send_error

T = SendErrorClass.THROTTLED
Q = SendErrorClass.DAILY_QUOTA
X = SendErrorClass.TRANSIENT
P = SendErrorClass.PERMANENT
A = SendErrorClass.ACCOUNT

SEND_ARGUMENTS: dict[str, Any] = {
    "FromEmailAddress": "news@acme.example",
    "Destination": {"ToAddresses": ["zoe@example.org"]},
    "Content": {"Raw": {"Data": b"Subject: x\r\n\r\nx\r\n"}},
}


def client_error(code: str, message: str, status: int | None) -> ClientError:
    response: dict[str, Any] = {"Error": {"Code": code, "Message": message}}
    if status is not None:
        response["ResponseMetadata"] = {"HTTPStatusCode": status}
    return ClientError(response, "SendEmail")


CASES = [
    # throttling: no attempt spent
    ("TooManyRequestsException", "Maximum sending rate exceeded.", 429, T),
    ("TooManyRequestsException", "Too many requests", 429, T),
    ("ThrottlingException", "Rate exceeded", 400, T),
    ("Throttling", "Maximum sending rate exceeded.", 400, T),
    ("SomeFutureCode", "Maximum sending rate exceeded.", 400, T),
    ("SomeFuture429", "slow down", 429, T),
    # the daily quota, whatever the code
    ("Throttling", "Daily message quota exceeded.", 400, Q),
    ("TooManyRequestsException", "Daily message quota exceeded.", 429, Q),
    ("LimitExceededException", "Daily message quota exceeded.", 400, Q),
    ("MessageRejected", "daily MESSAGE quota exceeded", 400, Q),
    # SES-side trouble
    ("InternalFailure", "An internal error occurred", 500, X),
    ("ServiceUnavailable", "Service unavailable", 503, X),
    ("InternalServerError", "", 500, X),
    ("SomeFutureCode", "bad gateway", 502, X),
    ("SomethingWeird", "no status at all", None, X),
    # this message or address will never be accepted
    ("MessageRejected", "Email address is not verified.", 400, P),
    ("MessageRejected", "Did not have authority to send from email news@acme.example", 400, P),
    ("BadRequestException", "Illegal address", 400, P),
    ("BadRequestException", "Missing final '@domain'", 400, P),
    ("NotFoundException", "Configuration set <x> does not exist.", 404, P),
    ("InvalidParameterValue", "Local address contains control or whitespace", 400, P),
    ("SomeFuture4xx", "forbidden", 403, P),
    # the account or service cannot send
    ("SendingPausedException", "Sending is paused for this account.", 400, A),
    ("AccountSuspendedException", "Account suspended", 400, A),
    ("MailFromDomainNotVerifiedException", "MAIL FROM domain not verified", 400, A),
    ("LimitExceededException", "There are too many instances of the specified resource type.", 400, A),
    ("AccountSendingPausedException", "Sending paused", 400, A),
]


@pytest.mark.parametrize(("code", "message", "status", "expected"), CASES)
def test_client_errors_are_classified_by_the_table(
    code: str, message: str, status: int | None, expected: SendErrorClass
) -> None:
    # When
    outcome = classify_send_error(client_error(code, message, status))
    # Then
    assert isinstance(outcome, SendError)
    assert (outcome.error_class, outcome.code, outcome.message, outcome.http_status) == (
        expected,
        code,
        message,
        status,
    )
    assert outcome.may_have_been_sent is False
    assert outcome.reason


def test_every_error_sendemail_declares_is_classified_by_its_own_rule() -> None:
    # Given the errors botocore's service model lists for sesv2 SendEmail, with their modelled status
    model = botocore.session.get_session().get_service_model("sesv2").operation_model("SendEmail")
    declared = {shape.name: shape.metadata["error"]["httpStatusCode"] for shape in model.error_shapes}
    expected = {
        "TooManyRequestsException": T,
        "LimitExceededException": A,
        "AccountSuspendedException": A,
        "SendingPausedException": A,
        "MessageRejected": P,
        "MailFromDomainNotVerifiedException": A,
        "NotFoundException": P,
        "BadRequestException": P,
    }
    # Then every declared error is decided by its code, not by a status or catch-all rule (a new
    # error in a botocore update fails here until someone decides it)
    assert set(declared) == set(expected)
    for code, status in declared.items():
        outcome = classify_send_error(client_error(code, "", status))
        assert outcome.error_class is expected[code], code
        assert "HTTP" not in outcome.reason and not outcome.reason.startswith(("unrecognised", "other")), code


@pytest.fixture
def sesv2() -> Iterator[Any]:
    client = boto3.client("sesv2", region_name="us-east-1")
    yield client
    client.close()


@pytest.mark.parametrize(
    ("code", "message", "status", "expected"),
    [
        ("TooManyRequestsException", "Maximum sending rate exceeded.", 429, T),
        ("LimitExceededException", "Daily message quota exceeded.", 400, Q),
        ("SendingPausedException", "Sending is paused for this account.", 400, A),
        ("MessageRejected", "Email address is not verified.", 400, P),
        ("InternalFailure", "Internal failure", 500, X),
    ],
)
def test_errors_as_boto3_raises_them_through_a_stubbed_client(
    sesv2: Any, code: str, message: str, status: int, expected: SendErrorClass
) -> None:
    # Given a real SES v2 client answering SendEmail with an error
    with Stubber(sesv2) as stubber:
        stubber.add_client_error(
            "send_email", service_error_code=code, service_message=message, http_status_code=status
        )
        # When
        with pytest.raises(ClientError) as raised:
            sesv2.send_email(**SEND_ARGUMENTS)
    # Then
    outcome = classify_send_error(raised.value)
    assert (outcome.error_class, outcome.code, outcome.message, outcome.http_status) == (
        expected,
        code,
        message,
        status,
    )
    if hasattr(sesv2.exceptions, code):  # modelled errors arrive as the client's own class
        assert isinstance(raised.value, getattr(sesv2.exceptions, code))


@pytest.mark.parametrize(
    ("error", "may_have_been_sent"),
    [
        (ReadTimeoutError(endpoint_url="https://email.us-east-1.amazonaws.com"), True),
        (EndpointConnectionError(endpoint_url="https://email.us-east-1.amazonaws.com"), False),
    ],
)
def test_transport_failures_as_boto3_raises_them(error: BotoCoreError, may_have_been_sent: bool) -> None:
    # Given a real client (no botocore retries) whose request fails on the way
    client = boto3.client("sesv2", region_name="us-east-1", config=Config(retries={"max_attempts": 1}))

    def fail(**_: Any) -> None:
        raise error

    client.meta.events.register("before-send.sesv2.SendEmail", fail)
    # When
    with pytest.raises(BotoCoreError) as raised:
        client.send_email(**SEND_ARGUMENTS)
    # Then
    outcome = classify_send_error(raised.value)
    assert outcome.error_class is X
    assert outcome.may_have_been_sent is may_have_been_sent
    assert outcome.code == type(error).__name__
    client.close()


@pytest.mark.parametrize(
    ("error", "expected", "may_have_been_sent"),
    [
        (ReadTimeoutError(endpoint_url="x"), X, True),
        (ConnectionClosedError(endpoint_url="x"), X, True),
        (ResponseStreamingError(error="x"), X, True),
        (ConnectTimeoutError(endpoint_url="x"), X, False),
        (EndpointConnectionError(endpoint_url="x"), X, False),
        (ProxyConnectionError(proxy_url="x"), X, False),
        (NoCredentialsError(), A, False),
        (ParamValidationError(report="Invalid type for parameter Content"), P, False),
        (WaiterError(name="w", reason="r", last_response={}), X, False),
    ],
)
def test_botocore_failures_without_an_answer(
    error: BotoCoreError, expected: SendErrorClass, may_have_been_sent: bool
) -> None:
    # When
    outcome = classify_send_error(error)
    # Then
    assert (outcome.error_class, outcome.may_have_been_sent) == (expected, may_have_been_sent)
    assert (outcome.code, outcome.message, outcome.http_status) == (type(error).__name__, str(error), None)


@pytest.mark.parametrize(
    "error", [ValueError("bad"), KeyError("MessageId"), RuntimeError("x"), TimeoutError(), KeyboardInterrupt()]
)
def test_anything_but_a_botocore_error_is_refused(error: BaseException) -> None:
    # An exception from our own code (possibly after SES accepted the message) is not a send failure.
    with pytest.raises(TypeError):
        classify_send_error(error)


def test_a_client_error_without_error_details_is_transient() -> None:
    outcome = classify_send_error(ClientError({}, "SendEmail"))
    assert (outcome.error_class, outcome.code, outcome.message, outcome.http_status) == (X, "", "", None)


def test_the_table_is_data_ending_in_a_catch_all() -> None:
    # Every class has a rule; the last rule takes any botocore error, so none falls off the table.
    assert {rule.error_class for rule in RULES} == set(SendErrorClass)
    assert all(rule.why for rule in RULES)
    outcome = classify_send_error(BotoCoreError())
    assert (outcome.error_class, outcome.reason) == (X, RULES[-1].why)
