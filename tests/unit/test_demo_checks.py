"""The checks `make demo` runs at the end fail when the outcome is wrong.

No runner, no server: a run is crafted as the list of sends each email service made, in order, and
played back through the demo's own check functions. The good run passes every check; each test
breaks one thing and asserts that exactly the checks about that thing fail, so no test can pass
because something unrelated went wrong.

The good run is the demo's seeded scenario (320, 15 and 198 recipients): each user's recipients
alternate between that user's services, users take turns on each service (round robin), and each
service sends at its pace. Tests about the messages themselves write `.eml` files (standard `email`
package) into `tmp_path` and read them through the demo's `Outbox`, on a smaller run to stay fast;
the other tests give the checks the `SentEmail`s the outbox would read, which the good run shows
to be the same."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest

from local_runner.demo import (
    PACE_WINDOW_SECONDS,
    Checks,
    Contact,
    Outbox,
    Scenario,
    SentEmail,
    ServicePlan,
    Snapshot,
    UserPlan,
    World,
    build_scenario,
    check_messages,
    check_outbox_count,
    check_recipients,
    fairness_windows,
    pace_allows,
    peak_sends_in,
    print_fairness,
    print_services,
    print_user_quotas,
    verify_completion,
)

# Enough for every kind of check: both services shared, churned contacts among cobalt's.
SMALL_RUN = {"acme": 8, "bloom": 3, "cobalt": 12}
FIRST_SEND = 1_796_000_000  # epoch seconds; every Date is stamped from here
UNSUBSCRIBE_URL = "https://api.example.test/v1/unsubscribe?token={token}"
EditMessage = Callable[[EmailMessage], None]
HEADERS_CHECK = "have From, To, Subject, Date, Message-ID, List-Unsubscribe, List-Unsubscribe-Post"
ONE_CLICK_CHECK = "offer RFC 8058 one-click unsubscribe"
PERSONAL_CHECK = "greet their recipient by first name and city (subject and text)"


# ---------------------------------------------------------------- a crafted run


@dataclass(frozen=True)
class Mail:
    """One message the dispatcher sends: to `contact`, for `user`, through `service`."""

    user: UserPlan
    contact: Contact
    service: ServicePlan
    rendered_for: Contact | None = None  # whose values fill the template; None: the recipient's
    text: str | None = None  # the text part as given, instead of the rendered template
    edit: EditMessage | None = None  # a last change to the built message (drop or alter a header)


@dataclass
class Run:
    scenario: Scenario
    world: World
    queues: dict[str, list[Mail]]  # service name → its sends, in order
    tasks: dict[str, dict[str, Any]]  # user id → the task as GET /api/tasks shows it at the end
    interval_ms: dict[str, int] = field(default_factory=dict)  # service name → time between its sends

    def user(self, user_id: str) -> UserPlan:
        return next(user for user in self.scenario.users if user.user_id == user_id)

    def service(self, name: str) -> ServicePlan:
        return next(plan for plan in self.scenario.services if plan.name == name)

    def sends(self, service: str, user_id: str) -> list[Mail]:
        return [mail for mail in self.queues[service] if mail.user.user_id == user_id]

    @property
    def total(self) -> int:
        return sum(len(queue) for queue in self.queues.values())


def round_robin(per_user: Mapping[str, list[Mail]]) -> list[Mail]:
    """One send per user per round, users in order, until each has none left."""
    queues = {user: list(mails) for user, mails in per_user.items()}
    order: list[Mail] = []
    while any(queues.values()):
        for mails in queues.values():
            if mails:
                order.append(mails.pop(0))
    return order


def good_run(contacts_per_user: Mapping[str, int] | None = None) -> Run:
    """The demo's scenario (optionally with only the first contacts of each user), sent as planned."""
    scenario = build_scenario()
    if contacts_per_user is not None:
        users = tuple(
            replace(user, contacts=user.contacts[: contacts_per_user[user.user_id]]) for user in scenario.users
        )
        scenario = replace(scenario, users=users)
    plans = {plan.name: plan for plan in scenario.services}
    per_service: dict[str, dict[str, list[Mail]]] = {plan.name: {} for plan in scenario.services}
    world = World(service_ids={plan.name: f"svc-{plan.name}" for plan in scenario.services})
    tasks: dict[str, dict[str, Any]] = {}
    for user in scenario.users:
        world.sender_of[user.sender_email.lower()] = user.user_id
        world.task_ids[user.user_id] = f"task-{user.user_id}"
        recipients = user.recipients()
        for index, contact in enumerate(recipients):
            service = plans[user.services[index % len(user.services)]]
            per_service[service.name].setdefault(user.user_id, []).append(Mail(user, contact, service))
        tasks[user.user_id] = finished_task(user, len(recipients))
    queues = {name: round_robin(per_user) for name, per_user in per_service.items()}
    return Run(scenario, world, queues, tasks)


def finished_task(user: UserPlan, recipients: int, status: str = "completed", **counts: int) -> dict[str, Any]:
    """The task as the API shows it; by default every recipient was sent."""
    all_sent = {"total": recipients, "sent": recipients, "queued": 0, "sending": 0, "failed": 0, "unknown": 0}
    return {"user_id": user.user_id, "name": user.campaign, "status": status, "counts": {**all_sent, **counts}}


def send_order(run: Run) -> list[tuple[datetime, Mail]]:
    """Every send with its Date (whole seconds), in the order SES accepted them: each service at its interval."""
    stamped = []
    for rank, plan in enumerate(run.scenario.services):
        interval = run.interval_ms.get(plan.name, round(plan.sending_rate * 1000))
        stamped += [
            (FIRST_SEND * 1000 + index * interval, rank, mail) for index, mail in enumerate(run.queues[plan.name])
        ]
    stamped.sort(key=lambda item: item[:2])
    return [(datetime.fromtimestamp(at_ms // 1000, UTC), mail) for at_ms, _, mail in stamped]


def file_name(number: int, mail: Mail) -> str:
    return f"{number:06d}-{message_id(number, mail)}.eml"  # like the runner's: a sequence number first


def message_id(number: int, mail: Mail) -> str:
    return f"{number:06d}.{mail.user.user_id}"


def sent_emails(run: Run, folder: Path) -> list[SentEmail]:
    """What the demo's Outbox reads from the files `write_outbox` writes."""
    return [
        SentEmail(
            folder / file_name(number, mail), mail.user.sender_email, mail.contact.email, mail.service.from_domain, date
        )
        for number, (date, mail) in enumerate(send_order(run), start=1)
    ]


def render(template: str, contact: Contact, token: str) -> str:
    values = {**contact.attributes, "unsubscribe_url": UNSUBSCRIBE_URL.format(token=token)}
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda match: values[match[1]], template)


def build_message(mail: Mail, date: datetime, token: str) -> bytes:
    """The message as the dispatcher builds it, with the standard email package."""
    values_of = mail.rendered_for or mail.contact
    message = EmailMessage()
    message["From"] = Address(mail.user.sender_name, addr_spec=mail.user.sender_email)
    message["To"] = Address(mail.contact.name, addr_spec=mail.contact.email)
    message["Subject"] = render(mail.user.template.subject, values_of, token)
    message["Date"] = format_datetime(date)
    # The demo tells the service of an email by its Message-ID domain, as the dispatcher builds it.
    message["Message-ID"] = f"<{token}@{mail.service.from_domain}>"
    message["List-Unsubscribe"] = f"<{UNSUBSCRIBE_URL.format(token=token)}>"
    message["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    message.set_content(mail.text if mail.text is not None else render(mail.user.template.text, values_of, token))
    message.add_alternative(render(mail.user.template.html, values_of, token), subtype="html")
    if mail.edit is not None:
        mail.edit(message)
    return message.as_bytes()


def write_outbox(run: Run, folder: Path) -> None:
    for number, (date, mail) in enumerate(send_order(run), start=1):
        (folder / file_name(number, mail)).write_bytes(build_message(mail, date, message_id(number, mail)))


class UsersApi:
    """GET /api/users/{id}, the only call the quota check makes; each user was charged sent + unknown."""

    def __init__(self, run: Run) -> None:
        self.quota = {user.user_id: user.quota for user in run.scenario.users}
        self.charged = {
            user_id: task["counts"]["sent"] + task["counts"]["unknown"] for user_id, task in run.tasks.items()
        }

    def call(self, method: str, path: str) -> dict[str, Any]:
        assert method == "GET"
        user_id = path.removeprefix("/api/users/")
        return {"quota": self.quota[user_id], "remaining_quota": self.quota[user_id] - self.charged[user_id]}


def services_view(run: Run) -> dict[str, dict[str, Any]]:
    """GET /api/services at the end: each service counted what it sent."""
    views = {}
    for plan in run.scenario.services:
        used = len(run.queues[plan.name])
        views[plan.name] = {
            "name": plan.name,
            "used_today": used,
            "daily_quota": plan.daily_quota,
            "usage_percentage": 100 * used / plan.daily_quota,
        }
    return views


def play_back(
    run: Run, *, outbox_dir: Path | None = None, api: Any = None, services: dict[str, Any] | None = None
) -> Checks:
    """The demo's checks, in the order `play` runs them. With `outbox_dir`, the run is written there as
    .eml files and read back through the demo's Outbox, and the messages are checked too."""
    if outbox_dir is None:
        outbox, emails = None, sent_emails(run, Path("outbox"))
    else:
        outbox = Outbox(outbox_dir)  # before the files, as in the demo: files already there are ignored
        write_outbox(run, outbox_dir)
        emails = outbox.refresh()
    final = Snapshot(elapsed=60.0, tasks=run.tasks, services={}, rates={})
    checks = Checks()

    def say(line: str) -> None:
        pass

    verify_completion(run.scenario, final, checks)
    print_user_quotas(api or UsersApi(run), run.scenario, final, checks, say)
    print_services(run.scenario, emails, services or services_view(run), checks, say)
    print_fairness(run.scenario, run.world, emails, checks, say)
    check_outbox_count(final, emails, checks)
    check_recipients(run.scenario, run.world, emails, checks)
    if outbox is not None:
        check_messages(run.scenario, run.world, outbox, checks)
    return checks


def failures(checks: Checks) -> list[str]:
    return [text for passed, text in checks.results if not passed]


def assert_only_fail(checks: Checks, *expected: str) -> None:
    """Each `expected` fragment is in a failed check's text, and every failed check is one of them."""
    failed = failures(checks)
    assert [text for text in failed if not any(fragment in text for fragment in expected)] == []
    assert [fragment for fragment in expected if not any(fragment in text for text in failed)] == []


@pytest.fixture
def run() -> Run:
    return good_run()


@pytest.fixture
def small_run() -> Run:
    return good_run(SMALL_RUN)


@pytest.fixture
def outbox_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "outbox"
    folder.mkdir()
    return folder


def replace_first_send(run: Run, service: str, user_id: str, **changes: Any) -> Mail:
    """Changes the user's first send on the service (in place: same turn, same time); returns it as it was."""
    queue = run.queues[service]
    index = queue.index(run.sends(service, user_id)[0])
    original = queue[index]
    queue[index] = replace(original, **changes)
    return original


# ---------------------------------------------------------------- the good run passes every check


def test_a_run_that_went_right_passes_every_check(run: Run) -> None:
    # Given every planned recipient got the campaign once, each service at its pace, users in turns
    # When the demo checks what the outbox holds
    checks = play_back(run)

    # Then every check passes
    assert failures(checks) == []
    # and every kind of check ran, for each user or service it is about
    texts = [text for _, text in checks.results]
    for user in run.scenario.users:
        expected = len(user.recipients())
        assert f"{user.user_id}: {user.campaign!r} completed, {expected}/{expected} sent, 0 failed, 0 unknown" in texts
        assert f"{user.user_id}: no recipient got the campaign twice" in texts
        assert f"{user.user_id}: the {expected} planned recipients each got it, nobody else" in texts
        assert f"{user.user_id}: quota charged ({expected}) = sent + unknown ({expected})" in texts
    assert "cobalt: the 52 contacts tagged churned got nothing" in texts
    assert "every email comes from one of the demo's senders (0 do not)" in texts
    for service in ("ses-fast", "ses-slow"):
        assert any(text.startswith(f"{service}: never faster than its pace") for text in texts)
        assert any(text.startswith(f"{service}: quota used today") for text in texts)
        assert any(text.startswith(f"{service}: users with work queued got equal turns") for text in texts)
    assert "outbox holds 533 emails = the tasks' sent counts (533)" in texts
    assert len(texts) == 3 * 4 + 1 + 1 + 2 * 3 + 1


def test_a_run_that_went_right_read_back_from_eml_files_passes_every_check(small_run: Run, outbox_dir: Path) -> None:
    # Given a smaller run that went right, written as .eml files (the tests on messages break one of them)
    # When the demo reads the files back through its Outbox and checks them, messages included
    checks = play_back(small_run, outbox_dir=outbox_dir)

    # Then every check passes, the messages' three among them
    assert failures(checks) == []
    total = small_run.total
    texts = [text for _, text in checks.results]
    assert f"{total}/{total} {HEADERS_CHECK}" in texts
    assert f"{total}/{total} {ONE_CLICK_CHECK}" in texts
    assert f"{total}/{total} {PERSONAL_CHECK}" in texts
    # and the run has what the other tests rely on: both services shared, churned contacts left out
    assert {mail.user.user_id for mail in small_run.queues["ses-fast"]} == {"acme", "cobalt"}
    assert {mail.user.user_id for mail in small_run.queues["ses-slow"]} == {"acme", "bloom", "cobalt"}
    assert small_run.user("cobalt").excluded_by_tag()


def test_the_outbox_reads_the_files_as_the_sends_the_other_tests_check(small_run: Run, outbox_dir: Path) -> None:
    # The tests without files give the checks these SentEmails directly.
    outbox = Outbox(outbox_dir)
    write_outbox(small_run, outbox_dir)

    assert outbox.refresh() == sent_emails(small_run, outbox_dir)


# ---------------------------------------------------------------- recipients


def send_last_on_slow(run: Run, mail: Mail) -> None:
    """One more send, last on ses-slow: after bloom's last send there, so the fairness window (which
    ends when the first user runs out of work) is unchanged."""
    run.queues["ses-slow"].append(replace(mail, service=run.service("ses-slow")))


def test_a_recipient_who_got_the_campaign_twice_fails_the_once_check(run: Run) -> None:
    # Given cobalt's first recipient on ses-fast gets the campaign again, later, on ses-slow
    again = run.sends("ses-fast", "cobalt")[0]
    send_last_on_slow(run, again)

    checks = play_back(run)

    # Then cobalt's "no recipient got the campaign twice" fails, naming the address (and the outbox
    # holds one email more than the tasks counted)
    assert_only_fail(
        checks,
        f"cobalt: no recipient got the campaign twice [{again.contact.email}]",
        "outbox holds 534 emails = the tasks' sent counts (533)",
    )


def test_a_contact_with_the_excluded_tag_who_got_mail_fails_the_exclusion_check(run: Run) -> None:
    # Given a cobalt contact tagged newsletter and churned gets the campaign (the rule excludes churned)
    cobalt = run.user("cobalt")
    churned = cobalt.excluded_by_tag()[0]
    assert {"newsletter", "churned"} <= set(churned.tags)
    send_last_on_slow(run, Mail(cobalt, churned, run.service("ses-slow")))

    checks = play_back(run)

    # Then the exclusion check fails naming them, and so does "nobody else" (they were not planned)
    assert_only_fail(
        checks,
        f"cobalt: the 52 contacts tagged churned got nothing [{churned.email}]",
        f"cobalt: the 198 planned recipients each got it, nobody else [unexpected: {churned.email}]",
        "outbox holds 534 emails = the tasks' sent counts (533)",
    )


def test_a_planned_recipient_who_got_nothing_fails_the_recipients_check(run: Run) -> None:
    # Given bloom's first recipient never got the campaign, though bloom's task counted it as sent
    skipped = run.sends("ses-slow", "bloom")[0]
    run.queues["ses-slow"].remove(skipped)

    checks = play_back(run)

    assert_only_fail(
        checks,
        f"bloom: the 15 planned recipients each got it, nobody else [missing: {skipped.contact.email}]",
        "outbox holds 532 emails = the tasks' sent counts (533)",
    )


def test_an_email_from_a_sender_the_demo_did_not_create_fails_the_senders_check(run: Run) -> None:
    # Given the first send on ses-slow is from a sender none of the demo's users added
    stranger = replace(run.user("bloom"), user_id="mallory", sender_email="spam@mallory.example.com")
    run.queues["ses-slow"].insert(0, Mail(stranger, run.user("bloom").contacts[0], run.service("ses-slow")))

    checks = play_back(run)

    assert_only_fail(
        checks,
        "every email comes from one of the demo's senders (1 do not)",
        "outbox holds 534 emails = the tasks' sent counts (533)",
    )


# ---------------------------------------------------------------- headers, unsubscribe, personalisation


def drop(header: str) -> EditMessage:
    def edit(message: EmailMessage) -> None:
        del message[header]

    return edit


def set_header(header: str, value: str) -> EditMessage:
    def edit(message: EmailMessage) -> None:
        message.replace_header(header, value)

    return edit


@pytest.mark.parametrize(
    ("edit", "failing"),
    [
        pytest.param(drop("List-Unsubscribe-Post"), (HEADERS_CHECK, ONE_CLICK_CHECK), id="no List-Unsubscribe-Post"),
        pytest.param(drop("List-Unsubscribe"), (HEADERS_CHECK, ONE_CLICK_CHECK), id="no List-Unsubscribe"),
        pytest.param(
            set_header("List-Unsubscribe-Post", "List-Unsubscribe=Yes"), (ONE_CLICK_CHECK,), id="not One-Click"
        ),
        pytest.param(
            set_header("List-Unsubscribe", "<mailto:unsubscribe@bloom.example.com>"), (ONE_CLICK_CHECK,), id="no https"
        ),
    ],
)
def test_a_message_without_one_click_unsubscribe_fails_the_headers_checks(
    small_run: Run, outbox_dir: Path, edit: EditMessage, failing: tuple[str, ...]
) -> None:
    # Given one of bloom's messages lacks, or has a wrong, RFC 8058 one-click unsubscribe header
    replace_first_send(small_run, "ses-slow", "bloom", edit=edit)

    checks = play_back(small_run, outbox_dir=outbox_dir)

    # Then the checks on that header fail, one message short of all
    total = small_run.total
    assert_only_fail(checks, *(f"{total - 1}/{total} {check}" for check in failing))


@pytest.mark.parametrize("header", ["Date", "Message-ID", "From", "Subject"])
def test_a_message_without_a_required_header_fails_the_headers_check(
    small_run: Run, outbox_dir: Path, header: str
) -> None:
    # Given one of bloom's messages lacks a header
    mail = replace_first_send(small_run, "ses-slow", "bloom", edit=drop(header))

    checks = play_back(small_run, outbox_dir=outbox_dir)

    # Then the headers check counts it, along with what else that header carries
    total = small_run.total
    unread = (
        f"outbox holds {total - 1} emails = the tasks' sent counts ({total})",
        "bloom: the 3 planned recipients each got it, nobody else [missing: ",
        "ses-slow: quota used today",
    )
    also_failing = {
        # The outbox cannot date or place the message, so the checks that count emails miss it.
        "Date": unread,
        "Message-ID": unread,
        # Nobody sent it, as far as the demo can tell.
        "From": ("every email comes from one of the demo's senders (1 do not)", "bloom: the 3 planned", PERSONAL_CHECK),
        # The subject is where the recipient's first name should be.
        "Subject": (PERSONAL_CHECK,),
    }[header]
    assert_only_fail(checks, f"{total - 1}/{total} {HEADERS_CHECK}", *also_failing)
    assert mail.contact.email in " ".join(failures(checks)) or header == "Subject"


def other_contact(user: UserPlan, contact: Contact) -> Contact:
    """Someone else on the user's list, with another first name and another city."""
    return next(c for c in user.contacts if c.first_name != contact.first_name and c.city != contact.city)


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda mail: {"rendered_for": other_contact(mail.user, mail.contact)}, id="someone else's"),
        pytest.param(lambda mail: {"text": mail.user.template.text}, id="text not rendered"),
        pytest.param(lambda mail: {"text": f"Hi {mail.contact.first_name},\n\nNo city.\n"}, id="text without city"),
        pytest.param(lambda mail: {"text": f"Hello, {mail.contact.city}!\n"}, id="text without greeting by name"),
        pytest.param(lambda mail: {"edit": set_header("Subject", "Our weekend sale")}, id="subject without name"),
    ],
)
def test_a_message_without_the_recipients_personalisation_fails_that_check(
    small_run: Run, outbox_dir: Path, change: Callable[[Mail], dict[str, Any]]
) -> None:
    # Given acme's first message on ses-fast does not carry its recipient's first name and city
    mail = small_run.sends("ses-fast", "acme")[0]
    replace_first_send(small_run, "ses-fast", "acme", **change(mail))

    checks = play_back(small_run, outbox_dir=outbox_dir)

    # Then the personalisation check fails and names that message (the first file: ses-fast's first send)
    total = small_run.total
    assert_only_fail(checks, f"{total - 1}/{total} {PERSONAL_CHECK}; not: 000001-000001.acme.eml")


# ---------------------------------------------------------------- pace and fairness


@pytest.mark.parametrize(
    ("service", "interval_ms"),
    [
        pytest.param("ses-slow", 200, id="ses-slow at 5/s (pace 4/s)"),
        pytest.param("ses-slow", 230, id="ses-slow at 4.35/s (pace 4/s)"),
        pytest.param("ses-fast", 90, id="ses-fast at 11.1/s (pace 10/s)"),
    ],
)
def test_a_service_sending_faster_than_its_pace_fails_the_pace_check(run: Run, service: str, interval_ms: int) -> None:
    # Given one service sends every `interval_ms`, more often than its sending_rate allows
    run.interval_ms[service] = interval_ms

    checks = play_back(run)

    # Then that service's pace check fails
    allowed = pace_allows(run.service(service), PACE_WINDOW_SECONDS)
    assert_only_fail(checks, f"{service}: never faster than its pace (")
    assert failures(checks)[0].endswith(f" in {PACE_WINDOW_SECONDS} s, at most {allowed})")


def sent_at(plan: ServicePlan, second: int) -> SentEmail:
    when = datetime.fromtimestamp(FIRST_SEND + second, UTC)
    return SentEmail(Path("x.eml"), "offers@acme.example.com", "someone@example.com", plan.from_domain, when)


def test_the_pace_check_allows_two_sends_of_stamping_jitter_and_not_three() -> None:
    slow = build_scenario().services[1]  # one send every 0.25 s: 40 in 10 s
    at_pace = [sent_at(slow, second) for second in range(10) for _ in range(4)]

    assert pace_allows(slow, PACE_WINDOW_SECONDS) == 42
    assert peak_sends_in(at_pace + [sent_at(slow, 9)] * 2, PACE_WINDOW_SECONDS) == 42
    assert peak_sends_in(at_pace + [sent_at(slow, 9)] * 3, PACE_WINDOW_SECONDS) == 43
    # A window is any 10 consecutive seconds, not only those from the first send.
    assert peak_sends_in([sent_at(slow, 0)] * 5 + [sent_at(slow, 9)] * 40 + [sent_at(slow, 18)] * 5, 10) == 45


def head_start(run: Run, service: str, user_id: str, turns: int) -> None:
    """Moves the user's last `turns` sends on the service to the front: extra turns before anyone else's."""
    queue = run.queues[service]
    moved = run.sends(service, user_id)[-turns:]
    for mail in moved:
        queue.remove(mail)
    queue[:0] = moved


@pytest.mark.parametrize(
    ("service", "extra_turns", "spread"),
    [
        # ses-slow: acme, bloom, cobalt in turn until bloom's 15th (last) send, cobalt one behind.
        pytest.param("ses-slow", 2, 3, id="ses-slow"),
        # ses-fast: acme, cobalt in turn until cobalt's last send.
        pytest.param("ses-fast", 3, 3, id="ses-fast"),
    ],
)
def test_unequal_turns_beyond_the_allowed_spread_fail_the_fairness_check(
    run: Run, service: str, extra_turns: int, spread: int
) -> None:
    # Given acme got extra turns on a shared service before the other users got theirs
    head_start(run, service, "acme", extra_turns)

    checks = play_back(run)

    # Then that service's fairness check fails
    assert_only_fail(checks, f"{service}: users with work queued got equal turns (spread {spread}, at most 2)")


@pytest.mark.parametrize(("service", "extra_turns"), [("ses-slow", 1), ("ses-fast", 2)])
def test_unequal_turns_within_the_allowed_spread_pass_the_fairness_check(
    run: Run, service: str, extra_turns: int
) -> None:
    head_start(run, service, "acme", extra_turns)

    checks = play_back(run)

    assert failures(checks) == []
    assert f"{service}: users with work queued got equal turns (spread 2, at most 2)" in [t for _, t in checks.results]


def test_the_fairness_window_ends_when_the_first_user_runs_out_of_work(run: Run) -> None:
    windows = {window.service: window for window in fairness_windows(run.scenario, run.world, sent_emails(run, Path()))}

    assert windows["ses-slow"].per_user == {"acme": 15, "bloom": 15, "cobalt": 14}
    assert windows["ses-fast"].per_user == {"acme": 99, "cobalt": 99}


# ---------------------------------------------------------------- completion and quotas


@pytest.mark.parametrize(
    ("status", "counts"),
    [
        pytest.param("sending", {}, id="not completed"),
        pytest.param("paused", {"sent": 14, "queued": 1}, id="paused"),
        pytest.param("completed", {"sent": 14, "failed": 1}, id="one failed"),
        pytest.param("completed", {"sent": 14, "unknown": 1}, id="one unknown"),
        pytest.param("completed", {"total": 14, "sent": 14}, id="planned one fewer"),
        pytest.param("completed", {"total": 16, "sent": 16}, id="planned one more"),
    ],
)
def test_a_task_not_completed_or_not_sent_to_every_recipient_fails_the_completion_check(
    run: Run, status: str, counts: dict[str, int]
) -> None:
    # Given bloom's task (15 recipients) ends in `status` with `counts` (and was charged for what it sent)
    bloom = run.user("bloom")
    run.tasks["bloom"] = finished_task(bloom, 15, status, **counts)

    checks = play_back(run)

    # Then the completion check fails (and, if the task's sent count moved, so does the outbox count)
    sent = counts.get("sent", 15)
    outbox_count = () if sent == 15 else (f"outbox holds 533 emails = the tasks' sent counts ({533 - 15 + sent})",)
    assert_only_fail(checks, f"bloom: {bloom.campaign!r} {status}, {sent}/15 sent", *outbox_count)


def test_a_user_charged_other_than_sent_plus_unknown_fails_the_quota_check(run: Run) -> None:
    api = UsersApi(run)
    api.charged["acme"] += 1  # charged for an email that was neither sent nor possibly sent

    checks = play_back(run, api=api)

    assert_only_fail(checks, "acme: quota charged (321) = sent + unknown (320)")


def test_a_service_whose_usage_differs_from_its_emails_fails_the_quota_used_check(run: Run) -> None:
    services = services_view(run)
    services["ses-fast"]["used_today"] -= 1

    checks = play_back(run, services=services)

    assert_only_fail(checks, "ses-fast: quota used today (258) = emails it sent (259)")


def test_files_already_in_the_outbox_belong_to_an_earlier_run(outbox_dir: Path) -> None:
    (outbox_dir / "000001-old.eml").write_bytes(b"From: a@b.example\r\n\r\nold\r\n")

    outbox = Outbox(outbox_dir)

    assert outbox.ignored == {"000001-old.eml"}
    assert outbox.refresh() == []
