"""The raw campaign message: every header and both parts read back exactly as given, the bytes are
7-bit with CRLF endings, no input can inject a header, and SES (moto) accepts the bytes."""

from __future__ import annotations

import email
import email.policy
import re
from email.message import EmailMessage, MIMEPart
from typing import Any

import boto3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from moto import mock_aws

import core.mail.mime as core_mime
from core.mail.mime import POLICY, _write_message, build_campaign_message, html_to_text
from core.mail.rendering import RenderedMessage

UNSUBSCRIBE = "https://abc123.execute-api.us-east-1.amazonaws.com/v1/unsubscribe?token=" + "Ab-_" * 40 + ".sig"
SENT_AT = 1_796_000_000.0
HTML = (
    "<html><body><h1>Hello Zoë</h1><p>Read <a href='https://news.example/1'>our news</a> &amp; more.</p></body></html>"
)


def build(**overrides: Any) -> bytes:
    arguments: dict[str, Any] = {
        "sender_name": "Acme Newsletter",
        "sender_email": "news@acme.example",
        "recipient_name": "Zoë Müller",
        "recipient_email": "zoe@example.org",
        "rendered": RenderedMessage(subject="Hello", html=HTML, text="Hello Zoë\n"),
        "message_id_domain": "acme.example",
        "unsubscribe_url": UNSUBSCRIBE,
        "sent_at": SENT_AT,
    }
    arguments.update(overrides)
    return build_campaign_message(**arguments)


def parse(raw: bytes) -> EmailMessage:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def body(part: Any) -> str:
    return str(part.get_content()).replace("\r\n", "\n")


def header_lines(raw: bytes) -> list[str]:
    return raw.split(b"\r\n\r\n", 1)[0].decode("ascii").split("\r\n")


def test_every_header_and_both_parts_read_back() -> None:
    # When
    raw = build(
        sender_name="José Müller, Jr.",
        rendered=RenderedMessage(subject="Grüße — 你好, Zoë!", html=HTML, text="Hallo Zoë\nZeile 2\n"),
        unsubscribe_mailto="unsubscribe@acme.example?subject=unsubscribe",
        extra_headers={"X-EDM-Task": "task_1", "Feedback-ID": "task_1:alice:edm"},
    )
    message = parse(raw)
    # Then the headers
    sender = message["From"].addresses[0]
    recipient = message["To"].addresses[0]
    assert (sender.display_name, sender.addr_spec) == ("José Müller, Jr.", "news@acme.example")
    assert (recipient.display_name, recipient.addr_spec) == ("Zoë Müller", "zoe@example.org")
    assert message["Subject"] == "Grüße — 你好, Zoë!"
    assert message["Date"] == "Mon, 30 Nov 2026 00:53:20 +0000"
    assert message["Date"].datetime.timestamp() == SENT_AT
    assert re.fullmatch(r"<[^<>@\s]+@acme\.example>", message["Message-ID"])
    assert message["MIME-Version"] == "1.0"
    assert message["List-Unsubscribe"] == (f"<{UNSUBSCRIBE}>, <mailto:unsubscribe@acme.example?subject=unsubscribe>")
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert message["X-EDM-Task"] == "task_1"
    assert message["Feedback-ID"] == "task_1:alice:edm"
    for name in ("From", "To", "Subject", "Date", "Message-ID", "MIME-Version", "List-Unsubscribe"):
        assert len(message.get_all(name) or []) == 1
    # And the parts: text first, then HTML
    assert message.get_content_type() == "multipart/alternative"
    parts = list(message.iter_parts())
    assert [part.get_content_type() for part in parts] == ["text/plain", "text/html"]
    assert body(parts[0]) == "Hallo Zoë\nZeile 2\n"
    assert body(parts[1]) == HTML + "\n"
    assert all(part.get_content_charset() == "utf-8" for part in parts)
    assert all("MIME-Version" not in part for part in parts)


def test_headers_come_in_a_fixed_order() -> None:
    # When
    raw = build(extra_headers={"X-EDM-Task": "t"})
    names = [line.split(":", 1)[0] for line in header_lines(raw) if line[:1] not in (" ", "\t")]
    # Then
    assert names == [
        "From",
        "To",
        "Subject",
        "Date",
        "Message-ID",
        "MIME-Version",
        "List-Unsubscribe",
        "List-Unsubscribe-Post",
        "X-EDM-Task",
        "Content-Type",
    ]


def test_bytes_are_seven_bit_with_crlf_line_endings_and_short_lines() -> None:
    # When a message full of non-ASCII, with a long text line
    raw = build(
        rendered=RenderedMessage(subject="Ünïcødé " * 30, html="<p>" + "ü" * 3000 + "</p>", text="é" * 2000 + "\n"),
        sender_name="Zoë " * 40,
    )
    # Then
    assert raw.isascii()
    assert b"\n" not in raw.replace(b"\r\n", b"")
    assert b"\r" not in raw.replace(b"\r\n", b"")
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998
    message = parse(raw)
    assert message["Subject"] == "Ünïcødé " * 30
    assert message["From"].addresses[0].display_name == ("Zoë " * 40).strip()
    assert body(next(message.iter_parts())) == "é" * 2000 + "\n"


def test_list_unsubscribe_is_written_verbatim_https_first_one_per_line() -> None:
    # When
    raw = build(unsubscribe_mailto="mailto:u@acme.example")
    lines = header_lines(raw)
    index = next(i for i, line in enumerate(lines) if line.startswith("List-Unsubscribe:"))
    # Then the long URL is not folded into encoded words
    assert lines[index] == f"List-Unsubscribe: <{UNSUBSCRIBE}>,"
    assert lines[index + 1] == " <mailto:u@acme.example>"
    assert lines[index + 2] == "List-Unsubscribe-Post: List-Unsubscribe=One-Click"


def test_without_mailto_list_unsubscribe_has_only_the_url() -> None:
    assert parse(build())["List-Unsubscribe"] == f"<{UNSUBSCRIBE}>"


@pytest.mark.parametrize(
    "subject",
    [
        "Hello",
        "Our  spring   sale — two spaces kept",
        "Héllo wörld — 你好 " * 4 + "end",
        "An ASCII subject long enough to need folding, " * 5 + "really",
        "x" * 400,
        "Looks encoded =?utf-8?q?but_is_not?= really",
        "Emoji 🎉🎉 party",
        "",
    ],
)
def test_subjects_round_trip_exactly(subject: str) -> None:
    # When
    raw = build(rendered=RenderedMessage(subject=subject, html="<p>x</p>", text="x"))
    # Then
    assert parse(raw)["Subject"] == subject
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998


@pytest.mark.parametrize(
    "name",
    ["Doe, John", 'He said "hi"', "Zoë", "李小龙", "O'Brien (Sales)", "a\\b", "  padded  ", "=?utf-8?q?x?="],
)
def test_display_names_round_trip(name: str) -> None:
    # When
    message = parse(build(sender_name=name, recipient_name=name))
    # Then
    assert message["From"].addresses[0].display_name == name.strip()
    assert message["To"].addresses[0].display_name == name.strip()
    assert message["From"].addresses[0].addr_spec == "news@acme.example"


def test_no_recipient_name_gives_a_bare_address() -> None:
    # When
    raw = build(recipient_name=None)
    # Then
    assert "To: zoe@example.org" in header_lines(raw)
    assert parse(raw)["To"].addresses[0].addr_spec == "zoe@example.org"


def test_non_ascii_domains_are_idna_encoded_and_non_ascii_local_parts_refused() -> None:
    # When
    message = parse(build(recipient_email="zoe@bücher.example"))
    # Then
    assert message["To"].addresses[0].addr_spec == "zoe@xn--bcher-kva.example"
    with pytest.raises(ValueError):
        build(recipient_email="zoë@example.org")


@pytest.mark.parametrize("address", ["", "no-at-sign", "@example.org", "a@", "a b@example.org", "<a@example.org>"])
def test_invalid_addresses_are_refused(address: str) -> None:
    with pytest.raises(ValueError):
        build(recipient_email=address)
    with pytest.raises(ValueError):
        build(sender_email=address)


def test_each_message_gets_its_own_message_id() -> None:
    assert parse(build())["Message-ID"] != parse(build())["Message-ID"]


def test_plain_text_is_derived_from_html_when_the_template_has_none() -> None:
    for text in (None, "", "  \n"):
        # When
        message = parse(build(rendered=RenderedMessage(subject="s", html=HTML, text=text)))
        # Then
        plain, html = message.iter_parts()
        assert body(plain) == "Hello Zoë\n\nRead our news (https://news.example/1) & more.\n"
        assert body(html) == HTML + "\n"


def test_html_to_text() -> None:
    html = (
        "<html><head><title>T</title><style>p { color: red }</style><script>alert(1)</script></head>"
        "<body><div>Hi&nbsp;there,\n  friend</div><ul><li>one</li><li>two</li></ul>"
        "<p>Go to <a href='https://x.example/a'>https://x.example/a</a> or <a href='#top'>top</a>"
        " or <a href='https://x.example/b'><img src='b.png' alt='Shop'></a>.</p>"
        "<table><tr><td>a</td><td>b</td></tr></table>line<br>break<br/>done<hr/>"
        "<p>&lt;b&gt; is not a tag</p></body></html>"
    )
    assert html_to_text(html) == (
        "Hi\xa0there, friend\n\n- one\n- two\n\nGo to https://x.example/a or top or Shop (https://x.example/b).\n\n"
        "a b\n\nline\nbreak\ndone\n\n<b> is not a tag\n"
    )


# ---------------------------------------------------------------- header injection

INJECTIONS = ["x\r\nBcc: evil@attacker.example", "x\nBcc: evil@attacker.example", "x\rBcc: y", "x\u2028y", "x\x00y"]


@pytest.mark.parametrize("value", INJECTIONS)
@pytest.mark.parametrize(
    "field",
    [
        "sender_name",
        "recipient_name",
        "subject",
        "sender_email",
        "recipient_email",
        "unsubscribe_url",
        "unsubscribe_mailto",
        "message_id_domain",
        "extra_value",
        "extra_name",
    ],
)
def test_line_breaks_and_controls_in_any_header_value_are_refused(field: str, value: str) -> None:
    # Given
    if field == "subject":
        overrides: dict[str, Any] = {"rendered": RenderedMessage(subject=value, html="<p>x</p>", text=None)}
    elif field in ("sender_email", "recipient_email"):
        overrides = {field: value.replace("x", "a@example.org", 1)}
    elif field == "unsubscribe_url":
        overrides = {field: UNSUBSCRIBE + value}
    elif field == "unsubscribe_mailto":
        overrides = {field: "u@acme.example" + value}
    elif field == "message_id_domain":
        overrides = {field: "acme.example" + value}
    elif field == "extra_value":
        overrides = {"extra_headers": {"X-Tag": value}}
    elif field == "extra_name":
        overrides = {"extra_headers": {"X-Tag" + value: "v"}}
    else:
        overrides = {field: value}
    # When / Then
    with pytest.raises(ValueError):
        build(**overrides)


def test_the_email_package_itself_refuses_line_breaks_in_header_values() -> None:
    # The second line of defence: our policy still refuses a CR/LF set as a plain string.
    message = EmailMessage(policy=POLICY)
    with pytest.raises(ValueError):
        message["Subject"] = "x\r\nBcc: evil@attacker.example"
    with pytest.raises(ValueError):
        message["X-Tag"] = "x\nBcc: evil@attacker.example"


def test_the_writer_refuses_a_line_break_in_any_header_value() -> None:
    # The second line of defence: whatever reaches the writer is checked again.
    for value in ("x\r\nBcc: evil@attacker.example", "x\nBcc: evil@attacker.example", "x\rBcc: e", "Zoë"):
        with pytest.raises(ValueError):
            _write_message([("Subject", value)], [("plain", "hi\n")])


def email_package_bytes(headers: list[tuple[str, str]], alternatives: list[tuple[str, str]], boundary: str) -> bytes:
    """What the email package writes for these headers and parts: how this module built messages
    before it wrote them itself."""
    message = EmailMessage(policy=POLICY)
    for name, value in headers:
        message[name] = core_mime._Raw(value)
    message.make_alternative()
    for subtype, content in alternatives:
        part = MIMEPart(policy=POLICY)
        part.set_content(content, subtype=subtype, charset="utf-8")
        message.attach(part)  # type: ignore[arg-type]
    message.set_boundary(boundary)
    return message.as_bytes()


BOUNDARY = "===============0777531074194637832=="
# Line breaks of every kind, long lines, '=' and non-ASCII: each of 7bit, quoted-printable, base64.
_BODY_TEXT = st.lists(
    st.one_of(
        st.sampled_from(["\n", "\r\n", "\r", " ", "=", ".", "-", "From ", "\t", "é", "你", "😀", "a" * 90]),
        st.text(st.characters(blacklist_categories=("Cs",)), max_size=20),
    ),
    max_size=60,
).map("".join)


@settings(max_examples=300, deadline=None)
@given(text=_BODY_TEXT, html=_BODY_TEXT)
def test_the_writer_writes_what_the_email_package_writes(text: str, html: str) -> None:
    headers = header_pairs(build(rendered=RenderedMessage(subject="Hello Zoë", html="<p>x</p>", text=None)))
    alternatives = [("plain", text), ("html", html)]
    assert _write_message(headers, alternatives, BOUNDARY) == email_package_bytes(headers, alternatives, BOUNDARY)


def test_whole_messages_are_what_the_email_package_writes() -> None:
    for text in ("Hello Zoë\n", None, "line " * 100, "a\r\nb\rc\n"):
        raw = build(
            rendered=RenderedMessage(subject="Grüße " * 20, html=HTML, text=text),
            recipient_name=None,
            extra_headers={"X-Campaign": "spring", "X-Note": "ünïcode"},
        )
        head = raw.partition(b"\r\n\r\n")[0]
        boundary = re.search(rb'boundary="([^"]+)"', head)
        assert boundary is not None
        parsed = parse(raw)
        alternatives = [("plain", body(parsed.get_payload()[0])), ("html", body(parsed.get_payload()[1]))]
        headers = header_pairs(raw)
        assert raw == email_package_bytes(headers, alternatives, boundary.group(1).decode())


def header_pairs(raw: bytes) -> list[tuple[str, str]]:
    """The message's headers as written (folds kept), in order, but the Content-Type the writer adds."""
    head = raw.split(b"\r\n\r\n", 1)[0].decode("ascii")
    fields = (field.partition(": ") for field in re.split(r"\r\n(?![ \t])", head))
    return [(name, value) for name, _, value in fields if name != "Content-Type"]


@pytest.mark.parametrize(
    "name", ["From", "to", "BCC", "Subject", "Message-ID", "List-Unsubscribe", "Content-Type", "Return-Path"]
)
def test_extra_headers_cannot_replace_or_repeat_the_builders_headers(name: str) -> None:
    with pytest.raises(ValueError):
        build(extra_headers={name: "x"})


@pytest.mark.parametrize("name", ["", "X Tag", "X:Tag", "X-Täg"])
def test_extra_header_names_must_be_rfc5322_field_names(name: str) -> None:
    with pytest.raises(ValueError):
        build(extra_headers={name: "x"})


def test_non_ascii_extra_header_values_are_encoded() -> None:
    assert parse(build(extra_headers={"X-Campaign": "Grüße 你好"}))["X-Campaign"] == "Grüße 你好"


@pytest.mark.parametrize(
    "url",
    [
        "ftp://x.example/u",
        "javascript:alert(1)",
        "https://x.example/u?a=1,2",
        "https://x.example/u?a=<b>",
        "https://x.example/a b",
        "https://x.example/ü",
        "https://x.example/" + "a" * 1000,
        "/relative",
    ],
)
def test_unsubscribe_urls_that_cannot_be_written_plainly_are_refused(url: str) -> None:
    with pytest.raises(ValueError):
        build(unsubscribe_url=url)


@pytest.mark.parametrize("domain", ["", "-bad.example", "a b.example", "<x>", "a@b"])
def test_message_id_domain_must_be_a_domain(domain: str) -> None:
    with pytest.raises(ValueError):
        build(message_id_domain=domain)


# ---------------------------------------------------------------- SES accepts it


def test_ses_v2_accepts_the_raw_bytes_and_stores_them_unchanged() -> None:
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.ses.models import ses_backends

    with mock_aws():
        # Given a verified sender
        boto3.client("ses", region_name="us-east-1").verify_email_identity(EmailAddress="news@acme.example")
        raw = build(
            rendered=RenderedMessage(subject="Grüße, Zoë", html=HTML, text=None),
            unsubscribe_mailto="u@acme.example",
        )
        # When
        reply = boto3.client("sesv2", region_name="us-east-1").send_email(
            FromEmailAddress="news@acme.example",
            Destination={"ToAddresses": ["zoe@example.org"]},
            Content={"Raw": {"Data": raw}},
        )
        # Then
        stored = ses_backends[DEFAULT_ACCOUNT_ID]["us-east-1"].sent_messages
        assert [message.id for message in stored] == [reply["MessageId"]]
        assert stored[0].raw_data == raw.decode("ascii")
        message = email.message_from_string(stored[0].raw_data, policy=email.policy.default)
        assert message["Subject"] == "Grüße, Zoë"
        assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert "zoe@example.org" in stored[0].destinations[0]


def test_ses_v2_refuses_an_unverified_sender() -> None:
    # A control for the test above: moto does check the sender, so acceptance means something.
    with mock_aws():
        client = boto3.client("sesv2", region_name="us-east-1")
        with pytest.raises(client.exceptions.MessageRejected):
            client.send_email(
                FromEmailAddress="news@acme.example",
                Destination={"ToAddresses": ["zoe@example.org"]},
                Content={"Raw": {"Data": build()}},
            )
