"""The embedded AWS keeps what SES events carry back and moto forgets: each SES v2 SendEmail's
EmailTags and configuration set, by message id (the local SES simulator puts them in `mail.tags`)."""

from __future__ import annotations

from email.message import EmailMessage

import boto3
import pytest
from botocore.config import Config

from core.settings import Settings
from local_runner.moto_server import EmbeddedAws

pytestmark = pytest.mark.concurrency

FAIL_FAST = Config(retries={"max_attempts": 1})


def test_tags_and_configuration_set_of_each_send_are_read_back(embedded_aws: EmbeddedAws, aws_server: Settings) -> None:
    ses = boto3.Session().client("sesv2", config=FAIL_FAST)
    ses.create_email_identity(EmailIdentity="sender@example.com")
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = "sender@example.com", "reader@example.com", "Hi"
    message.set_content("Hello.")
    raw = {"Raw": {"Data": message.as_bytes()}}

    tagged = ses.send_email(
        FromEmailAddress="sender@example.com",
        Destination={"ToAddresses": ["reader@example.com"]},
        Content=raw,
        EmailTags=[{"Name": "task_id", "Value": "task_1"}, {"Name": "user_id", "Value": "alice"}],
        ConfigurationSetName="edm-scheduler-events",
    )
    plain = ses.send_email(
        FromEmailAddress="sender@example.com", Destination={"ToAddresses": ["reader@example.com"]}, Content=raw
    )
    with pytest.raises(ses.exceptions.ClientError):  # refused: nothing sent, nothing kept
        ses.send_email(
            FromEmailAddress="nobody@else.example", Destination={"ToAddresses": ["r@example.com"]}, Content=raw
        )

    first, second = embedded_aws.sent_raw_messages()
    assert (first.message_id, second.message_id) == (tagged["MessageId"], plain["MessageId"])
    assert first.tags == (
        ("task_id", "task_1"),
        ("user_id", "alice"),
        ("ses:configuration-set", "edm-scheduler-events"),
    )
    assert second.tags == ()
