"""Mailbox providers by MX: a domain that is not one of core.mail.providers' own (a company's, a
school's) is often received by a big provider's servers: a business on Google Workspace is received
by Gmail, one on Microsoft 365 by Outlook's. Those servers throttle it as the provider's mail, so it
belongs in the provider's group: a limit or a deferral on `gmail` also holds mail to them.

The planner asks, per chunk, for the domains it has not seen (one MX lookup each, in parallel,
within a time budget) and writes the group onto the subtasks whose domain's most preferred MX host
is a provider's (`SubtaskModel.group`); the dispatcher's pick groups by it. A domain whose lookup
fails, times out or names no provider stays its own group, as without MX grouping. Answers are kept
for the life of the function's container (MX records change rarely; a campaign is planned once).

Off unless `MX_GROUPING` is true (template parameter `MxGrouping`): it makes DNS lookups from the
planner, which Lambda can make; a machine without DNS would only pay their timeouts."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from threading import Lock

from core.mail.providers import group_of_domain

# The most preferred MX host's name ends with -> the provider receiving the domain's mail (the
# providers' names in core.mail.providers.PROVIDERS). Host names as the providers publish them for
# their hosted domains (e.g. aspmx.l.google.com, contoso-com.mail.protection.outlook.com).
MX_SUFFIXES: tuple[tuple[str, str], ...] = (
    ("google.com", "gmail"),
    ("googlemail.com", "gmail"),
    ("protection.outlook.com", "microsoft"),
    ("outlook.com", "microsoft"),
    ("hotmail.com", "microsoft"),
    ("yahoodns.net", "yahoo"),
    ("icloud.com", "apple"),
    ("protonmail.ch", "proton"),
    ("zoho.com", "zoho"),
    ("zoho.eu", "zoho"),
    ("zoho.in", "zoho"),
    ("yandex.net", "yandex"),
    ("yandex.ru", "yandex"),
    ("mail.ru", "mailru"),
    ("gmx.net", "gmx"),
    ("web.de", "gmx"),
    ("comcast.net", "comcast"),
)

# domain -> its MX hosts, most preferred first (empty: none); raises when the lookup fails.
Resolver = Callable[[str], Sequence[str]]


def provider_of_mx(hosts: Sequence[str]) -> str | None:
    """The provider whose servers the most preferred of `hosts` is, or None."""
    if not hosts:
        return None
    host = hosts[0].casefold().rstrip(".")
    for suffix, provider in MX_SUFFIXES:
        if host == suffix or host.endswith("." + suffix):
            return provider
    return None


class MxGroups:
    """The provider groups of domains by their MX hosts, remembered (a lookup that failed too, so a
    domain without DNS is asked once). Thread-safe."""

    def __init__(
        self, resolve: Resolver, *, budget_seconds: float = 2.0, workers: int = 8, remember: int = 100_000
    ) -> None:
        self.resolve = resolve
        self.budget_seconds = budget_seconds  # at most this long of lookups per call (a planned chunk)
        self.workers = workers
        self.remember = remember
        self._known: dict[str, str | None] = {}
        self._lock = Lock()
        self.lookups = 0  # made so far (for tests and logs)

    def groups(self, domains: Iterable[str], time_left: float) -> dict[str, str]:
        """domain -> provider for those of `domains` received by a provider's servers, looking up
        (in parallel, for at most `budget_seconds`, and never past `time_left`) the ones not seen
        yet. A domain of the providers' own table is not looked up: its group is known."""
        budget_seconds = min(self.budget_seconds, time_left)
        wanted = {domain.casefold().rstrip(".") for domain in domains}
        wanted = {domain for domain in wanted if domain and group_of_domain(domain) == domain}
        with self._lock:
            unseen = sorted(domain for domain in wanted if domain not in self._known)
        if unseen and budget_seconds > 0:
            self._look_up(unseen, budget_seconds)
        with self._lock:
            return {domain: group for domain in wanted if (group := self._known.get(domain))}

    def _look_up(self, domains: list[str], budget_seconds: float) -> None:
        pool = ThreadPoolExecutor(max_workers=max(1, min(self.workers, len(domains))))
        try:
            futures = {pool.submit(self._provider_of, domain): domain for domain in domains}
            done, _ = wait(futures, timeout=budget_seconds)
        finally:
            pool.shutdown(wait=False, cancel_futures=True)  # a lookup past the budget is not waited for
        found = {futures[future]: future.result() for future in done}
        with self._lock:
            if len(self._known) + len(found) > self.remember:
                self._known.clear()
            self._known.update(found)  # those past the budget are asked again next time

    def _provider_of(self, domain: str) -> str | None:
        with self._lock:
            self.lookups += 1
        try:
            hosts = self.resolve(domain)
        except Exception:  # any DNS failure: the domain stays its own group
            return None
        return provider_of_mx(hosts)


def dns_resolver(lifetime_seconds: float) -> Resolver:
    """MX lookups through the system's DNS resolver (dnspython), each given up after
    `lifetime_seconds`; no MX record answers an empty list."""
    import dns.exception
    import dns.resolver

    resolver = dns.resolver.Resolver()

    def resolve(domain: str) -> list[str]:
        try:
            answer = resolver.resolve(domain, "MX", lifetime=lifetime_seconds)
        except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN):
            return []
        except dns.exception.DNSException as error:
            raise LookupError(f"MX lookup of {domain} failed: {error}") from error
        records = sorted(answer, key=lambda record: record.preference)
        return [str(record.exchange).rstrip(".").casefold() for record in records]

    return resolve
