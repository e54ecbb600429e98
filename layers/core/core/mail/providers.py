"""Mailbox providers: which recipient domains one provider's servers receive for.

A provider throttles by its own infrastructure, not by the domain written in the address:
gmail.com and googlemail.com are one Gmail, aol.com is received by Yahoo's servers, hotmail.com
and outlook.com by Microsoft's. A recipient's *group* is its provider's name when the domain is in
this table, otherwise the domain itself; per-domain limits, interleaving and deferrals all count by
group (core.dispatch.domain_throttles). A limit configured for a domain of the table (e.g.
`gmail.com`) is a limit for its whole provider."""

from __future__ import annotations

# Provider -> the domains its mail servers receive for (the large consumer families).
PROVIDERS: dict[str, frozenset[str]] = {
    "gmail": frozenset({"gmail.com", "googlemail.com"}),
    "yahoo": frozenset(
        {
            "yahoo.com",
            "ymail.com",
            "rocketmail.com",
            "aol.com",
            "aim.com",
            "love.com",
            "wow.com",
            "games.com",
            "verizon.net",
            "att.net",
            "sbcglobal.net",
            "bellsouth.net",
        }
    ),
    "microsoft": frozenset(
        {
            "outlook.com",
            "hotmail.com",
            "live.com",
            "msn.com",
            "passport.com",
            "windowslive.com",
            "olc.protection.outlook.com",
        }
    ),
    "apple": frozenset({"icloud.com", "me.com", "mac.com"}),
    "proton": frozenset({"proton.me", "protonmail.com", "protonmail.ch", "pm.me"}),
    "gmx": frozenset({"gmx.de", "gmx.net", "gmx.com", "gmx.at", "gmx.ch", "web.de"}),
    "yandex": frozenset({"yandex.ru", "yandex.com", "ya.ru", "yandex.by", "yandex.kz", "yandex.ua"}),
    "mailru": frozenset({"mail.ru", "inbox.ru", "list.ru", "bk.ru", "internet.ru"}),
    "comcast": frozenset({"comcast.net", "xfinity.com"}),
    "zoho": frozenset({"zoho.com", "zohomail.com"}),
}

# Country variants of the big three: yahoo.co.uk, hotmail.fr, outlook.de, live.co.uk, ...
_COUNTRY_FAMILIES = {
    "yahoo": "yahoo",
    "ymail": "yahoo",
    "hotmail": "microsoft",
    "outlook": "microsoft",
    "live": "microsoft",
}

_BY_DOMAIN = {domain: provider for provider, domains in PROVIDERS.items() for domain in domains}


def domain_of(address: str) -> str:
    return address.rpartition("@")[2].strip().casefold().rstrip(".")


def group_of_domain(domain: str) -> str:
    """The provider receiving mail for `domain`, or the domain itself."""
    domain = domain.casefold().rstrip(".")
    known = _BY_DOMAIN.get(domain)
    if known is not None:
        return known
    label, _, rest = domain.partition(".")
    # yahoo.co.uk, hotmail.de: a family label followed by a country suffix (at most two labels).
    if label in _COUNTRY_FAMILIES and rest and rest.count(".") <= 1 and len(rest.rpartition(".")[2]) == 2:
        return _COUNTRY_FAMILIES[label]
    return domain


def group_of(address: str) -> str:
    """The group of a recipient address (see the module docstring)."""
    return group_of_domain(domain_of(address))


def is_provider(name: str) -> bool:
    return name in PROVIDERS
