"""Signed unsubscribe tokens: what is signed comes back; anything altered, forged or garbled is an
InvalidInput naming `token`."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from core.errors import InvalidInput
from core.mail import unsubscribe
from core.mail.unsubscribe import UnsubscribeClaim, sign_unsubscribe, unsubscribe_url, verify_unsubscribe

KEY = "test-signing-key"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _invalid(token: Any, key: str = KEY) -> None:
    with pytest.raises(InvalidInput) as raised:
        verify_unsubscribe(key, token)
    assert raised.value.field == "token"


def test_a_signed_token_verifies_to_its_claim() -> None:
    # When
    token = sign_unsubscribe(KEY, "alice", "ct_0001", "task_42")
    # Then
    assert verify_unsubscribe(KEY, token) == UnsubscribeClaim(user_id="alice", contact_id="ct_0001", task_id="task_42")


def test_token_is_compact_and_url_safe() -> None:
    # When (ids as core.storage.ids makes them; user ids are Cognito subs)
    token = sign_unsubscribe(KEY, "0f8fad5b-d9cb-469f-a165-70867728950e", "ct_" + "a" * 24, "task_" + "b" * 24)
    # Then
    assert re.fullmatch(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]{43}", token)
    assert len(token) < 200


def test_ids_with_any_characters_round_trip() -> None:
    # Given ids with separators, quotes and non-ASCII
    claim = UnsubscribeClaim(user_id='a.b"c', contact_id="ß#é/x", task_id="任务 1")
    # When
    token = sign_unsubscribe(KEY, claim.user_id, claim.contact_id, claim.task_id)
    # Then
    assert verify_unsubscribe(KEY, token) == claim
    assert token.isascii()


def test_same_input_gives_the_same_token_and_different_input_a_different_one() -> None:
    assert sign_unsubscribe(KEY, "u", "c", "t") == sign_unsubscribe(KEY, "u", "c", "t")
    assert sign_unsubscribe(KEY, "u", "c", "t") != sign_unsubscribe(KEY, "u", "c", "t2")
    assert sign_unsubscribe(KEY, "u", "c", "t") != sign_unsubscribe("other-key", "u", "c", "t")


def test_a_token_signed_with_another_key_is_rejected() -> None:
    _invalid(sign_unsubscribe("another-key", "alice", "ct_1", "task_1"))


def test_changing_the_payload_is_detected() -> None:
    # Given a genuine token, and a payload naming someone else
    token = sign_unsubscribe(KEY, "alice", "ct_1", "task_1")
    _, signature = token.split(".")
    forged_payload = _b64(b'["alice","ct_2","task_1"]')
    # Then
    _invalid(f"{forged_payload}.{signature}")


@pytest.mark.parametrize("position", [0, 5, -1])
def test_flipping_any_character_is_detected(position: int) -> None:
    token = sign_unsubscribe(KEY, "alice", "ct_1", "task_1")
    for index in (position, len(token.split(".")[0]) + 1 + position % 40):
        chars = list(token)
        chars[index] = "A" if chars[index] != "A" else "B"
        _invalid("".join(chars))


def test_signatures_cannot_be_swapped_between_tokens() -> None:
    one = sign_unsubscribe(KEY, "alice", "ct_1", "task_1")
    two = sign_unsubscribe(KEY, "bob", "ct_9", "task_9")
    _invalid(one.split(".")[0] + "." + two.split(".")[1])


@pytest.mark.parametrize(
    "token",
    [
        "",
        ".",
        "abc",
        "abc.",
        ".abc",
        "a.b.c",
        "not a token",
        "ünïcode.sig",
        "x" * 5000,
        None,
        123,
    ],
)
def test_garbled_tokens_are_rejected(token: Any) -> None:
    _invalid(token)


def test_padding_or_extra_characters_on_a_genuine_token_are_rejected() -> None:
    token = sign_unsubscribe(KEY, "alice", "ct_1", "task_1")
    _invalid(token + "=")
    _invalid(token + "A")
    _invalid(" " + token)


@pytest.mark.parametrize(
    "payload",
    [b"not json", b'["only","two"]', b'{"user_id":"a"}', b'["a","",""]', b'["a","b",3]', b"\xff\xfe"],
)
def test_a_correctly_signed_but_malformed_payload_is_rejected(payload: bytes) -> None:
    # Given a payload signed with the real key (as if the key had leaked, or a bug wrote it)
    encoded = _b64(payload)
    digest = hmac.new(KEY.encode(), b"edm-unsubscribe:v1:" + encoded.encode(), hashlib.sha256).digest()
    # Then
    _invalid(f"{encoded}.{_b64(digest)}")


def test_the_signature_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(unsubscribe.hmac, "compare_digest", spy)
    token = sign_unsubscribe(KEY, "alice", "ct_1", "task_1")
    # When
    verify_unsubscribe(KEY, token)
    # Then
    assert len(calls) == 1


def test_empty_key_or_ids_are_programming_errors() -> None:
    with pytest.raises(ValueError):
        sign_unsubscribe("", "u", "c", "t")
    with pytest.raises(ValueError):
        sign_unsubscribe(KEY, "u", "", "t")
    with pytest.raises(ValueError):
        verify_unsubscribe("", sign_unsubscribe(KEY, "u", "c", "t"))


@pytest.mark.parametrize(
    ("base", "expected_prefix", "kept"),
    [
        ("https://api.example.com/v1/unsubscribe", "https://api.example.com/v1/unsubscribe?token=", {}),
        ("http://127.0.0.1:3000/unsubscribe", "http://127.0.0.1:3000/unsubscribe?token=", {}),
        ("https://x.example/u?lang=en", "https://x.example/u?lang=en&token=", {"lang": ["en"]}),
        ("https://x.example/u?token=old&a=1", "https://x.example/u?a=1&token=", {"a": ["1"]}),
    ],
)
def test_unsubscribe_url_carries_the_token_in_its_query(base: str, expected_prefix: str, kept: dict[str, Any]) -> None:
    # Given
    token = sign_unsubscribe(KEY, "alice", "ct_1", "task_1")
    # When
    url = unsubscribe_url(base, token)
    # Then
    assert url == expected_prefix + token
    query = parse_qs(urlsplit(url).query)
    assert query.pop("token") == [token]
    assert query == kept
    assert verify_unsubscribe(KEY, query_token(url)) == UnsubscribeClaim("alice", "ct_1", "task_1")


def query_token(url: str) -> str:
    return parse_qs(urlsplit(url).query)["token"][0]


@pytest.mark.parametrize("base", ["", "/unsubscribe", "ftp://x.example/u", "javascript:alert(1)", "https:///nohost"])
def test_unsubscribe_url_needs_an_absolute_http_base(base: str) -> None:
    with pytest.raises(ValueError):
        unsubscribe_url(base, "tok.sig")
