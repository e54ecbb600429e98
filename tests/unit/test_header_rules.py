"""The one rule set for header text and addresses, and rendered subjects folded to fit it."""

from __future__ import annotations

import pytest

from core.mail.header_rules import address_problem, header_text_problem, one_line
from core.mail.mime import build_campaign_message
from core.mail.rendering import render_parts


@pytest.mark.parametrize(
    "char", ["\r", "\n", "\x00", "\x0b", "\x0c", "\x1b", "\x7f", "\x85", "\x9f", "\u2028", "\u2029"]
)
def test_control_characters_and_line_separators_are_refused(char: str) -> None:
    assert header_text_problem(f"Shop{char}News") is not None


@pytest.mark.parametrize("text", ["Shop News", "Caf\u00e9 \u2615", "tab\tseparated", "\u4f60\u597d"])
def test_printable_text_and_tab_are_accepted(text: str) -> None:
    assert header_text_problem(text) is None


@pytest.mark.parametrize(
    ("address", "ok"),
    [
        ("news@shop.example", True),
        ("news@b\u00fccher.example", True),
        ("j\u00f6rg@shop.example", False),
        ("news@shop\u2028.example", False),
        ("no-at-sign", False),
    ],
)
def test_addresses_need_an_ascii_local_part(address: str, ok: bool) -> None:
    assert (address_problem(address) is None) is ok


def test_one_line_turns_each_run_of_breaks_into_one_space() -> None:
    assert one_line(" Hello \r\n\u2028 world\x00!\u0085 ") == "Hello world !"


def test_a_subject_rendered_from_contact_data_with_separators_still_builds_a_message() -> None:
    # Given an attribute (attributes are free text) holding line separators
    contact = {"email": "ana@example.org", "name": "Ana", "attributes": {"city": "Lis\u2028bon\x85"}}
    rendered = render_parts("Hello {{ city }}", "<p>x</p>", None, contact)
    # Then the subject is one line and the message builds with it
    assert rendered.subject == "Hello Lis bon"
    raw = build_campaign_message(
        sender_name="Shop",
        sender_email="news@shop.example",
        recipient_name="Ana",
        recipient_email="ana@example.org",
        rendered=rendered,
        message_id_domain="shop.example",
        unsubscribe_url="https://api.example/unsubscribe?token=t",
    )
    assert b"Subject: Hello Lis bon\r\n" in raw
