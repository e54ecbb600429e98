"""What may end up in a mail header, stated once. The API's models refuse it at the door (422
naming the field) and the MIME builder refuses it again when it builds a message, so nothing the
API accepted can fail later at send time for a reason the API could have seen.

- Header text (display names, subjects, and every other name we store) carries no control
  character: no C0 but TAB, no DEL, no C1 (NEL among them), no U+2028/U+2029. Python's
  `str.splitlines` splits on most of them, mail clients on some; a header must not be split.
- An address has an ASCII local part: SES cannot send SMTPUTF8 mail. Its domain may be
  internationalised (it is IDNA-encoded when the message is built)."""

from __future__ import annotations

import re

# TAB is allowed: it is folding whitespace in a header. Everything else below U+0020, DEL, C1.
_FORBIDDEN_CLASS = "[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]"
_FORBIDDEN = re.compile(_FORBIDDEN_CLASS)
_BREAKS = re.compile(f"[ \t]*{_FORBIDDEN_CLASS}+[ \t]*")


def header_text_problem(value: str) -> str | None:
    """Why `value` cannot go into a header, or None when it can."""
    found = _FORBIDDEN.search(value)
    if found is None:
        return None
    return f"must not contain line breaks or control characters (U+{ord(found.group()):04X})"


def one_line(value: str) -> str:
    """Text rendered from contact data (a subject), made fit for a header: every run of line
    breaks and control characters becomes one space."""
    return _BREAKS.sub(" ", value).strip()


def address_problem(address: str) -> str | None:
    """Why `address` cannot be sent to or from through SES, or None when it can."""
    problem = header_text_problem(address)
    if problem is not None:
        return problem
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        return "must be an email address"
    if not local.isascii():
        return "the part before @ must be ASCII (SES cannot send internationalised local parts)"
    try:
        domain.encode("idna")
    except UnicodeError:
        return "the domain cannot be encoded for DNS (IDNA)"
    return None


def check_header_text(value: str) -> str:
    """For validators: the value, or ValueError with the reason."""
    problem = header_text_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


def check_address(value: str) -> str:
    problem = address_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value
