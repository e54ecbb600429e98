"""The property the concurrency tests rely on: the embedded AWS serves one request at a time, so a
conditional write is atomic; plus SES read-back and a clean shutdown."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from email import message_from_binary_file, message_from_string
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

from core.settings import Settings
from local_runner.moto_server import EmbeddedAws, EmbeddedAwsError
from local_runner.triggers import OutboxWriter, clear_outbox

pytestmark = pytest.mark.concurrency

FAIL_FAST = Config(retries={"max_attempts": 1})


def test_concurrent_conditional_increments_never_pass_the_cap(aws_server: Settings) -> None:
    threads, attempts, cap = 8, 200, 500
    key = {"user_id": {"S": "counter"}}
    clients = [boto3.Session().client("dynamodb", config=FAIL_FAST) for _ in range(threads)]
    start_together = threading.Barrier(threads)

    def increment(client: Any) -> int:
        start_together.wait()
        admitted = 0
        for _ in range(attempts):
            try:
                client.update_item(
                    TableName=aws_server.users_table,
                    Key=key,
                    UpdateExpression="ADD n :one",
                    ConditionExpression="attribute_not_exists(n) OR n < :cap",
                    ExpressionAttributeValues={":one": {"N": "1"}, ":cap": {"N": str(cap)}},
                )
            except client.exceptions.ConditionalCheckFailedException:
                continue
            admitted += 1
        return admitted

    with ThreadPoolExecutor(threads) as pool:
        admitted = list(pool.map(increment, clients))  # re-raises any other error

    item = clients[0].get_item(TableName=aws_server.users_table, Key=key, ConsistentRead=True)["Item"]
    assert int(item["n"]["N"]) == cap
    assert sum(admitted) == cap


def test_raw_emails_sent_through_sesv2_are_read_back(embedded_aws: EmbeddedAws, aws_server: Settings) -> None:
    assert embedded_aws.sent_raw_messages() == []  # the reset between tests forgets sent mail
    ses = boto3.Session().client("sesv2", config=FAIL_FAST)
    ses.create_email_identity(EmailIdentity="sender@example.com")
    email = EmailMessage()
    email["From"] = "sender@example.com"
    email["To"] = "reader@example.com"
    email["Subject"] = "Spring campaign"
    email.set_content("Hello, reader.")

    reply = ses.send_email(
        FromEmailAddress="sender@example.com",
        Destination={"ToAddresses": ["reader@example.com"]},
        Content={"Raw": {"Data": email.as_bytes()}},
    )

    [sent] = embedded_aws.sent_raw_messages()
    assert sent.message_id == reply["MessageId"]
    assert sent.source == "sender@example.com"
    assert "reader@example.com" in sent.destinations
    assert message_from_string(sent.raw_data)["Subject"] == "Spring campaign"
    assert "Hello, reader." in sent.raw_data


def _send(ses: Any, recipient: str, region_ses: Any = None) -> str:
    email = EmailMessage()
    email["From"] = "sender@example.com"
    email["To"] = recipient
    email["Subject"] = f"For {recipient}"
    email.set_content("Hello.")
    client = region_ses or ses
    reply = client.send_email(
        FromEmailAddress="sender@example.com",
        Destination={"ToAddresses": [recipient]},
        Content={"Raw": {"Data": email.as_bytes()}},
    )
    message_id: str = reply["MessageId"]
    return message_id


def test_the_outbox_gets_every_message_once_across_regions_and_after_a_lost_folder(
    embedded_aws: EmbeddedAws, aws_server: Settings, tmp_path: Path
) -> None:
    session = boto3.Session()
    ses = session.client("sesv2", config=FAIL_FAST)
    other_region = session.client("sesv2", region_name="eu-west-1", config=FAIL_FAST)
    for client in (ses, other_region):
        client.create_email_identity(EmailIdentity="sender@example.com")
    outbox = tmp_path / "outbox"
    writer = OutboxWriter(embedded_aws, outbox)

    first = _send(ses, "a@example.com")
    writer.poll_once()
    second = _send(other_region, "b@example.com")  # a second SES backend after the first had mail
    third = _send(ses, "c@example.com")
    writer.poll_once()
    shutil.rmtree(outbox)  # someone clears the folder while the runner writes
    fourth = _send(ses, "d@example.com")
    writer.poll_once()
    writer.poll_once()  # nothing new: nothing written twice

    files = sorted(path.name for path in outbox.iterdir())
    assert files == [f"000004-{fourth}.eml"]
    assert writer.written == 4
    # Each message once; within one poll, backends are read one after another.
    assert [first, third, second, fourth] == [m.message_id for m in embedded_aws.sent_raw_messages()]
    with (outbox / files[0]).open("rb") as handle:
        assert message_from_binary_file(handle)["To"] == "d@example.com"
    assert clear_outbox(outbox) == 1 and list(outbox.iterdir()) == []


def test_the_server_process_is_gone_after_the_context_exits() -> None:
    with pytest.raises(RuntimeError, match="boom"), EmbeddedAws() as server:
        pid, url = server.pid, server.endpoint_url
        assert _answers(url)
        raise RuntimeError("boom")

    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # reaped, not a zombie
    assert not _answers(url)


def test_a_server_that_cannot_start_fails_fast_with_its_output() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))  # bound, not listening: our polls are refused, not left hanging
        with pytest.raises(EmbeddedAwsError, match="Address already in use"):
            EmbeddedAws(taken.getsockname()[1]).start()


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/moto-api/config", timeout=2):  # noqa: S310 - local http
            return True
    except urllib.error.URLError:
        return False
