"""The campaign email as raw MIME bytes for SES v2 `SendEmail(Content={"Raw": {"Data": ...}})`.

Only the standard `email` package's encoders. Choices, and why:
- Every value that goes into a header is checked first: a CR, LF or any other control or
  line-separator character is a ValueError, so no input can add a header (`Bcc:`) or end the
  headers early; the writer checks every header line once more (printable ASCII, CRLF only to
  fold). (The email package refuses CR/LF in plain string values too, but not everywhere on every
  3.11 patch release: an `Address` display name was folded unquoted before 3.11.10.)
- The message is written here, not by the email package's generator: its header objects (a parse
  of each header, a class made per header) and its generator took ~1.3 ms of the ~1.5 ms of CPU
  per message, where every header is already encoded and folded. The bodies are encoded by
  `set_content`'s own encoder (7bit, quoted-printable or base64, its choice), and a test holds the
  bytes equal to what `EmailMessage.as_bytes()` writes for the same headers and parts.
- The headers that carry data (From, To, Subject, Message-ID, List-Unsubscribe*, extra headers) are
  encoded and folded here and written verbatim. Python 3.11's header folder drops the space
  between two RFC 2047 encoded words ("wörld 你好" comes back as "wörld你好") and turns a long URL into
  encoded words, which no mailbox provider reads as a URL. Non-ASCII display names and subjects
  become `=?utf-8?b?…?=` words via `email.header.Header` (spaces encoded inside the words); ASCII
  values are folded at spaces. Lines stay within RFC 5322's 998 characters.
- 7-bit output with CRLF line endings (`cte_type="7bit"`): non-ASCII or long-lined bodies are
  quoted-printable or base64, so the bytes pass any relay unchanged. Non-ASCII address domains are
  IDNA-encoded; a non-ASCII local part (SMTPUTF8) is refused: SES cannot send to it.
- `List-Unsubscribe: <https…>, <mailto…>` (https first: RFC 8058 one-click POSTs go to it) and
  `List-Unsubscribe-Post: List-Unsubscribe=One-Click`.
- multipart/alternative: text/plain first, text/html last (clients show the last part they can).
  With no plain text, one is derived from the HTML.
Any ValueError means this message cannot be built for this recipient: nothing was sent."""

from __future__ import annotations

import functools
import random
import re
import sys
import time
from datetime import UTC, datetime
from email.charset import Charset
from email.contentmanager import _encode_text  # type: ignore[attr-defined]  # set_content's encoder
from email.errors import HeaderParseError
from email.header import Header
from email.headerregistry import Address
from email.policy import EmailPolicy
from email.utils import format_datetime, formataddr, make_msgid
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urlsplit

from core.mail.header_rules import address_problem, header_text_problem
from core.mail.rendering import RenderedMessage

# Headers this module owns; extra_headers may not set or repeat them.
RESERVED_HEADERS = frozenset(
    {
        "from",
        "to",
        "cc",
        "bcc",
        "reply-to",
        "sender",
        "subject",
        "date",
        "message-id",
        "mime-version",
        "content-type",
        "content-transfer-encoding",
        "list-unsubscribe",
        "list-unsubscribe-post",
        "return-path",
    }
)
MAX_URI_CHARS = 900
MAX_LINE_CHARS = 998  # RFC 5322 2.1.1
FOLD_AT = 78
_HEADER_NAME = re.compile(r"[\x21-\x39\x3b-\x7e]+")  # RFC 5322 ftext: printable ASCII but ':'
_DOMAIN = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")
_LINE_BREAK = re.compile(r"\r\n|\r|\n")  # what the generator writes as CRLF
_CRLF = "\r\n"
_BOUNDARY_DIGITS = len(repr(sys.maxsize - 1))  # email.generator's boundary format
_FOLDED = re.compile(r"[\x20-\x7e\t]*(?:\r\n[ \t][\x20-\x7e\t]*)*")  # printable ASCII, CRLF only to fold


class _Raw(str):
    """A header value already encoded and folded here (printable ASCII, CRLF + space folds)."""

    __slots__ = ()


def _raw(name: str, value: str) -> _Raw:
    lines = value.split("\r\n")
    if not _FOLDED.fullmatch(value) or any(len(line) > MAX_LINE_CHARS - len(name) - 2 for line in lines):
        raise ValueError(f"{name} cannot be written within RFC 5322 line limits")
    return _Raw(value)


class _CampaignPolicy(EmailPolicy):
    """The SMTP policy, 7-bit, that writes `_Raw` header values exactly as given (the policy the
    email package would write this module's messages with; the tests build them that way too)."""

    def header_store_parse(self, name: str, value: Any) -> tuple[str, Any]:
        if isinstance(value, _Raw):
            return (name, value)
        return super().header_store_parse(name, value)

    def fold(self, name: str, value: Any) -> str:
        if isinstance(value, _Raw):
            return f"{name}: {value}".replace("\r\n", self.linesep) + self.linesep
        return super().fold(name, value)  # type: ignore[no-any-return]

    def fold_binary(self, name: str, value: Any) -> bytes:
        if isinstance(value, _Raw):
            return self.fold(name, value).encode("ascii")
        return super().fold_binary(name, value)


POLICY = _CampaignPolicy(linesep="\r\n", cte_type="7bit")


def _check_header(field: str, value: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{field} must be a string")
    problem = header_text_problem(value)  # the same rule the API's models apply
    if problem is not None:
        raise ValueError(f"{field} {problem}")
    return value


def _fold_ascii(name: str, value: str) -> str:
    """Fold printable ASCII before spaces so that no line exceeds FOLD_AT where a space allows."""
    lines = [""]
    width = len(name) + 2
    for piece in re.split(r"(?= )", value):
        if lines[-1].strip() and piece.strip() and width + len(lines[-1]) + len(piece) > FOLD_AT:
            lines.append("")
            width = 0
        lines[-1] += piece
    return "\r\n".join(lines)


def _needs_encoding(text: str) -> bool:
    # "=?" could be read as the start of an encoded word: encode it so that it reads literally.
    return not text.isascii() or "=?" in text or not text.isprintable()


def _encoded_text(name: str, text: str) -> str:
    if _needs_encoding(text):
        return str(Header(text, "utf-8", header_name=name).encode(linesep="\r\n"))
    return _fold_ascii(name, text)


def _address(header: str, field: str, display_name: str | None, email: str) -> _Raw:
    display_name = _check_header(f"{field}_name", display_name or "").strip()
    _check_header(f"{field}_email", email)
    problem = address_problem(email)
    if problem is not None:
        raise ValueError(f"{field}_email {problem}: {email!r}")
    local, _, domain = email.rpartition("@")
    try:
        address = Address(addr_spec=f"{local}@{domain.encode('idna').decode('ascii')}")
    except (ValueError, IndexError, HeaderParseError) as error:  # UnicodeError is a ValueError
        raise ValueError(f"{field}_email is not a valid address: {email!r}") from error
    if not address.username or not address.domain or any(c.isspace() for c in address.addr_spec):
        raise ValueError(f"{field}_email is not a valid address: {email!r}")
    if not display_name:
        return _raw(header, address.addr_spec)
    if _needs_encoding(display_name):
        # One encoded word: decoders disagree on the space between two encoded words inside a
        # display name (RFC 2047 drops it, Python's address parser keeps it). Only a name too long
        # for one line is split into several words.
        single = f"{Charset('utf-8').header_encode(display_name)} <{address.addr_spec}>"
        if len(single) <= MAX_LINE_CHARS - len(header) - 2:
            return _raw(header, single)
        return _raw(header, f"{_encoded_text(header, display_name)} <{address.addr_spec}>")
    return _raw(header, _fold_ascii(header, formataddr((display_name, address.addr_spec))))


# A task's sender is the same for every recipient: checked and encoded once.
_sender_address = functools.lru_cache(maxsize=256)(_address)


def _check_uri(field: str, uri: str, schemes: tuple[str, ...]) -> str:
    _check_header(field, uri)
    parts = urlsplit(uri)
    if (
        not uri.isascii()
        or len(uri) > MAX_URI_CHARS
        or parts.scheme not in schemes
        or any(c.isspace() or c in "<>," for c in uri)
    ):
        raise ValueError(f"{field} must be an ASCII {'/'.join(schemes)} URI without spaces, '<', '>' or ','")
    if parts.scheme != "mailto" and not parts.netloc:
        raise ValueError(f"{field} must be an absolute URL")
    return uri


def _list_unsubscribe(url: str, mailto: str | None) -> _Raw:
    # http is accepted for the local runner's endpoint; in AWS the API is https.
    uris = [_check_uri("unsubscribe_url", url, ("https", "http"))]
    if mailto:
        if not mailto.lower().startswith("mailto:"):
            mailto = f"mailto:{mailto}"
        uris.append(_check_uri("unsubscribe_mailto", mailto, ("mailto",)))
    return _raw("List-Unsubscribe", ",\r\n ".join(f"<{uri}>" for uri in uris))


def _extra_headers(headers: dict[str, str]) -> list[tuple[str, _Raw]]:
    checked: list[tuple[str, _Raw]] = []
    for name, value in headers.items():
        if not isinstance(name, str) or not _HEADER_NAME.fullmatch(name):
            raise ValueError(f"bad header name: {name!r}")
        if name.lower() in RESERVED_HEADERS:
            raise ValueError(f"header {name} is set by the message builder")
        checked.append((name, _raw(name, _encoded_text(name, _check_header(f"header {name}", value)))))
    return checked


def build_campaign_message(
    *,
    sender_name: str,
    sender_email: str,
    recipient_name: str | None,
    recipient_email: str,
    rendered: RenderedMessage,
    message_id_domain: str,
    unsubscribe_url: str,
    unsubscribe_mailto: str | None = None,
    extra_headers: dict[str, str] | None = None,
    sent_at: float | None = None,
) -> bytes:
    """The raw message: From (with display name), To, Subject, Date (`sent_at`, epoch seconds;
    default now), Message-ID (`<…@message_id_domain>`), MIME-Version, List-Unsubscribe,
    List-Unsubscribe-Post, `extra_headers` (in order), then the text and HTML alternatives. CRLF
    line endings, 7-bit clean. Raises ValueError for any header value with a line break or control
    character, an invalid address, URI or domain, or an extra header that is reserved or badly
    named."""
    sender = _sender_address("From", "sender", sender_name, sender_email)
    recipient = _address("To", "recipient", recipient_name, recipient_email)
    subject = _raw("Subject", _encoded_text("Subject", _check_header("subject", rendered.subject)))
    if not _DOMAIN.fullmatch(_check_header("message_id_domain", message_id_domain)):
        raise ValueError(f"message_id_domain is not a domain name: {message_id_domain!r}")
    list_unsubscribe = _list_unsubscribe(unsubscribe_url, unsubscribe_mailto)
    extras = _extra_headers(extra_headers or {})

    headers: list[tuple[str, str]] = [
        ("From", sender),
        ("To", recipient),
        ("Subject", subject),
        # RFC 5322 numeric zone (+0000); "GMT" is an obsolete zone name.
        ("Date", format_datetime(datetime.fromtimestamp(time.time() if sent_at is None else sent_at, UTC))),
        ("Message-ID", make_msgid(domain=message_id_domain)),
        ("MIME-Version", "1.0"),
        ("List-Unsubscribe", list_unsubscribe),
        ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
        *extras,
    ]
    text = rendered.text if rendered.text and rendered.text.strip() else html_to_text(rendered.html)
    return _write_message(headers, [("plain", text), ("html", rendered.html)])


def _write_message(headers: list[tuple[str, str]], alternatives: list[tuple[str, str]], boundary: str = "") -> bytes:
    """The bytes `EmailMessage(policy=POLICY)` with these headers, `make_alternative()` and one
    `set_content(body, subtype=..., charset="utf-8")` part per alternative would write (a test
    holds them equal), without the email package's header objects and generator: every header
    here is already encoded and folded (see the module docstring). Every header line is checked
    here once more (_raw): none can be written with a bare CR or LF."""
    lines = [f"{name}: {_raw(name, value)}\r\n" for name, value in headers]
    parts = []
    for subtype, body in alternatives:
        # set_content's own choice of 7bit, quoted-printable or base64, and its encoding.
        cte, payload = _encode_text(body, "utf-8", None, POLICY)
        parts.append(
            f'Content-Type: text/{subtype}; charset="utf-8"\r\n'
            f"Content-Transfer-Encoding: {cte}\r\n\r\n{_LINE_BREAK.sub(_CRLF, payload)}"
        )
    while not boundary or any(boundary in part for part in parts):  # as the generator makes one
        boundary = f"{'=' * 15}{random.randrange(sys.maxsize):0{_BOUNDARY_DIGITS}d}=="
    lines.append(f'Content-Type: multipart/alternative;\r\n boundary="{boundary}"\r\n\r\n')
    lines.append(f"--{boundary}\r\n")
    lines.append(f"\r\n--{boundary}\r\n".join(parts))
    lines.append(f"\r\n--{boundary}--\r\n")
    return "".join(lines).encode("ascii")


# ---------------------------------------------------------------- plain text from HTML

# Block elements start on a new line; paragraph-like ones are also set off by a blank line.
_LINE_TAGS = frozenset(
    {"address", "article", "aside", "br", "dd", "div", "dl", "dt", "figcaption", "figure", "footer", "form"}
    | {"header", "li", "main", "nav", "pre", "section", "tr"}
)
_PARAGRAPH_TAGS = frozenset({"blockquote", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "ol", "p", "table", "ul"})
_CELL_TAGS = frozenset({"td", "th"})
_HIDDEN_TAGS = frozenset({"head", "noscript", "script", "style", "template", "title"})
_SPACES = re.compile(r"[ \t\r\f\v]+")
_BLANK_LINES = re.compile(r"\n{3,}")


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.chunks: list[str] = []
        self.hidden = 0
        self.links: list[tuple[str | None, int]] = []  # href, index of the first chunk of its label

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _HIDDEN_TAGS:
            self.hidden += 1
        elif tag in _PARAGRAPH_TAGS:
            self.chunks.append("\n\n")
        elif tag in _LINE_TAGS:
            self.chunks.append("\n- " if tag == "li" else "\n")
        elif tag in _CELL_TAGS:
            self.chunks.append(" ")
        elif tag == "a":
            self.links.append((dict(attrs).get("href"), len(self.chunks)))
        elif tag == "img" and not self.hidden:
            self.chunks.append(dict(attrs).get("alt") or "")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag in _HIDDEN_TAGS:
            self.hidden = max(0, self.hidden - 1)

    def handle_endtag(self, tag: str) -> None:
        if tag in _HIDDEN_TAGS:
            self.hidden = max(0, self.hidden - 1)
        elif tag in _PARAGRAPH_TAGS:
            self.chunks.append("\n\n")
        elif tag in _LINE_TAGS and tag not in ("li", "br"):
            self.chunks.append("\n")
        elif tag == "a" and self.links:
            href, start = self.links.pop()
            label = " ".join("".join(self.chunks[start:]).split())
            if href and href.split(":", 1)[0].lower() in ("http", "https") and href != label:
                self.chunks.append(f" ({href})" if label else href)

    def handle_data(self, data: str) -> None:
        if not self.hidden:
            self.chunks.append(data.replace("\n", " "))


def html_to_text(html: str) -> str:
    """A readable plain-text version of an HTML body: tags dropped, blocks on their own lines, list
    items as `- item`, links as `label (url)`, head/script/style dropped, entities decoded."""
    extractor = _TextExtractor()
    extractor.feed(html)
    extractor.close()
    lines = (_SPACES.sub(" ", line).strip() for line in "".join(extractor.chunks).split("\n"))
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip() + "\n"
