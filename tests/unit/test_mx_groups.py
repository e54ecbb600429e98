"""MX grouping's rules without DNS: which MX hosts are which provider's, and MxGroups' lookups
(only domains not known already, each once, in parallel within a time budget, failures and silence
leaving a domain its own group)."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest

from core.mail.mx_groups import MX_SUFFIXES, MxGroups, provider_of_mx
from core.mail.providers import PROVIDERS


@pytest.mark.parametrize(
    ("hosts", "provider"),
    [
        (["aspmx.l.google.com", "alt1.aspmx.l.google.com"], "gmail"),
        (["ASPMX.L.GOOGLE.COM."], "gmail"),  # case and the root dot do not matter
        (["contoso-com.mail.protection.outlook.com"], "microsoft"),
        (["mta5.am0.yahoodns.net"], "yahoo"),
        (["mx01.mail.icloud.com"], "apple"),
        (["mail.protonmail.ch", "mailsec.protonmail.ch"], "proton"),
        (["mx.zoho.eu"], "zoho"),
        (["mx.yandex.net"], "yandex"),
        (["mxs.mail.ru"], "mailru"),
        (["mx00.gmx.net"], "gmx"),
        (["mx-ha03.web.de"], "gmx"),
        (["mx1a1.comcast.net"], "comcast"),
        (["mx1.selfhosted.example", "aspmx.l.google.com"], None),  # only the most preferred counts
        (["notgoogle.com"], None),  # a suffix is a whole label
        ([], None),
    ],
)
def test_the_most_preferred_mx_host_names_the_provider(hosts: list[str], provider: str | None) -> None:
    assert provider_of_mx(hosts) == provider


def test_every_provider_named_by_mx_is_one_of_the_providers_table() -> None:
    assert {provider for _, provider in MX_SUFFIXES} <= set(PROVIDERS)


def test_only_unknown_domains_are_looked_up_once_each_and_failures_stay_their_own_group() -> None:
    asked: Counter[str] = Counter()

    def resolve(domain: str) -> list[str]:
        asked[domain] += 1
        if domain == "broken.example":
            raise LookupError("SERVFAIL")
        return {"acme.example": ["aspmx.l.google.com"], "contoso.example": ["x.mail.protection.outlook.com"]}.get(
            domain, []
        )

    mx = MxGroups(resolve)
    domains = ["acme.example", "ACME.example.", "contoso.example", "broken.example", "plain.example", "gmail.com"]
    assert mx.groups(domains, 5.0) == {"acme.example": "gmail", "contoso.example": "microsoft"}
    assert mx.groups(["acme.example", "broken.example", "new.example"], 5.0) == {"acme.example": "gmail"}
    # gmail.com is a provider's own domain (no lookup); every other domain was asked exactly once
    assert asked == {
        name: 1 for name in ["acme.example", "contoso.example", "broken.example", "plain.example", "new.example"]
    }
    assert mx.lookups == 5


def test_lookups_run_in_parallel_and_one_past_the_budget_is_asked_again_later() -> None:
    release = threading.Event()
    started = Counter[str]()

    def resolve(domain: str) -> list[str]:
        started[domain] += 1
        if domain == "slow.example" and started[domain] == 1:
            release.wait(5.0)  # silent DNS, the first time
        return ["aspmx.l.google.com"]

    mx = MxGroups(resolve, workers=4)
    began = time.monotonic()
    found = mx.groups([f"d{n}.example" for n in range(3)] + ["slow.example"], 0.5)
    assert time.monotonic() - began < 2.0  # the budget, not the slow lookup, ended the wait
    assert found == {f"d{n}.example": "gmail" for n in range(3)}  # the slow one: its own group for now
    release.set()
    assert mx.groups(["slow.example"], 2.0) == {"slow.example": "gmail"}  # asked again, answered
    assert started["slow.example"] == 2


def test_no_budget_means_no_lookup() -> None:
    mx = MxGroups(lambda domain: ["aspmx.l.google.com"])
    assert mx.groups(["acme.example"], 0.0) == {}
    assert mx.lookups == 0
