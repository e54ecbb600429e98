"""The planner's pure parts: who a task names, the subtask items it writes (in SubtaskModel's own
wire format), the pages it remembers between its passes, and the batched puts. No AWS."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from core.planning.planner import Audience, Page, RememberedPages, is_deliverable, subtask_items
from core.states import SubtaskStatus
from core.storage.batch_writes import BATCH_WRITE_LIMIT, put_wire_items
from core.storage.ids import contact_id_for, queue_key, subtask_partition
from core.storage.models import ContactModel, SubtaskModel
from tests.conftest import FakeClock

CREATED = 1_796_000_000.0


def _contact(
    number: int, *, tags: list[str], status: str = "subscribed", created_at: float = CREATED, **extra: Any
) -> dict[str, Any]:
    email = f"person{number}@example.org"
    contact = ContactModel(
        "alice",
        contact_id_for(email),
        email=email,
        tags=tags,
        status=status,
        created_at=created_at,
        updated_at=created_at,
        **extra,
    )
    wire: dict[str, Any] = contact.serialize()
    return wire


def _audience(**fields: Any) -> Audience:
    values: dict[str, Any] = {
        "created_at": CREATED,
        "explicit": frozenset(),
        "include": frozenset(),
        "exclude": frozenset(),
        "has_rule": True,
    }
    return Audience(**(values | fields))


# ---------------------------------------------------------------- recipients


def test_a_tag_rule_names_contacts_with_an_included_tag_and_none_excluded() -> None:
    audience = _audience(include=frozenset({"news"}), exclude=frozenset({"skip"}))

    assert audience.names(_contact(1, tags=["news", "other"]))
    assert not audience.names(_contact(2, tags=["other"]))
    assert not audience.names(_contact(3, tags=["news", "skip"]))
    assert not audience.names(_contact(4, tags=[]))


def test_explicit_contacts_are_named_without_a_tag_but_exclusion_still_wins() -> None:
    plain, blocked = _contact(1, tags=[]), _contact(2, tags=["skip"])
    ids = frozenset({plain["contact_id"]["S"], blocked["contact_id"]["S"]})
    audience = _audience(explicit=ids, exclude=frozenset({"skip"}), has_rule=False)

    assert audience.names(plain)
    assert not audience.names(blocked)
    assert not audience.names(_contact(3, tags=["news"]))  # no rule: a tag names no one


def test_contacts_created_after_the_task_are_not_named() -> None:
    audience = _audience(include=frozenset({"news"}))

    assert audience.names(_contact(1, tags=["news"], created_at=CREATED))
    assert not audience.names(_contact(2, tags=["news"], created_at=CREATED + 1))


def test_only_subscribed_contacts_are_deliverable() -> None:
    assert is_deliverable(_contact(1, tags=[]))
    for status in ("unsubscribed", "bounced", "complained"):
        assert not is_deliverable(_contact(2, tags=[], status=status))
    assert not is_deliverable({"contact_id": {"S": "ct_1"}})  # no status at all


# ---------------------------------------------------------------- subtask items


@pytest.mark.parametrize(
    "extra",
    [
        {"name": "Person One", "attributes": {"first_name": "P", "orders": 3, "vip": True, "tags": ["a", "b"]}},
        {},  # no name, no attributes
    ],
)
def test_subtask_items_are_what_the_subtask_model_would_write(extra: dict[str, Any]) -> None:
    # Given a contact as DynamoDB returns it, and the plan's routing and templates
    contact = _contact(1, tags=["news"], **extra)
    contact_id = contact["contact_id"]["S"]
    routing, templates = ["svc_a", "svc_b", "svc_a"], ["tpl_1", "tpl_2"]

    # When its subtask is built at position 7
    (item,) = subtask_items("task_1", "alice", routing, templates, [contact], 7, CREATED + 5)

    # Then it is byte for byte what the model serialises for the same subtask, and reads back as one
    model = ContactModel.from_raw_data(contact)
    expected = SubtaskModel(
        subtask_partition("task_1", contact_id),
        contact_id,
        task_id="task_1",
        user_id="alice",
        seq=7,
        email=model.email,
        name=model.name,
        attributes=model.attributes.as_dict() if model.attributes else {},
        template_id="tpl_2",
        service_id="svc_b",
        status=SubtaskStatus.QUEUED,
        queue_key=queue_key("svc_b", "task_1"),
        attempts=0,
        next_attempt_at=0,
        created_at=CREATED + 5,
    ).serialize()
    assert item == expected
    subtask = SubtaskModel.from_raw_data(item)
    assert (subtask.seq, subtask.status, subtask.queue_key) == (7, "queued", "svc_b#task_1")


def test_subtask_items_follow_the_routing_cycle_and_templates_by_position() -> None:
    contacts = [_contact(number, tags=[]) for number in range(6)]

    items = subtask_items("task_1", "alice", ["a", "a", "b"], ["t1", "t2"], contacts, 3, CREATED)

    assert [item["seq"]["N"] for item in items] == ["3", "4", "5", "6", "7", "8"]
    assert [item["service_id"]["S"] for item in items] == ["a", "a", "b", "a", "a", "b"]
    assert [item["template_id"]["S"] for item in items] == ["t2", "t1", "t2", "t1", "t2", "t1"]


def test_the_same_chunk_builds_the_same_items_twice() -> None:
    contacts = [_contact(number, tags=[], name=f"P{number}") for number in range(30)]

    def build() -> list[dict[str, Any]]:
        return subtask_items("task_1", "alice", ["a", "b"], ["t1"], contacts, 0, CREATED)

    assert build() == build()


# ---------------------------------------------------------------- remembered pages


def _page(cursor: str, size: int) -> Page:
    return Page([_contact(1, tags=[])], cursor, exhausted=False, wire_bytes=size)


def test_remembered_pages_are_taken_once_by_the_cursor_they_start_after() -> None:
    remembered = RememberedPages(budget=1000)
    first, second = _page("c1", 100), _page("c2", 100)
    remembered.keep("", first)
    remembered.keep("c1", second)

    assert remembered.take("c1") is second
    assert remembered.take("c1") is None  # taken
    assert remembered.take("c9") is None  # never read in this invocation
    assert remembered.take("") is first
    assert remembered.held == 0


def test_pages_beyond_the_budget_are_not_remembered() -> None:
    remembered = RememberedPages(budget=250)
    for number in range(4):
        remembered.keep(f"c{number}", _page(f"c{number + 1}", 100))

    assert sorted(remembered.pages) == ["c0", "c1"]
    assert remembered.held == 200


# ---------------------------------------------------------------- batched puts


class _FakeDynamoDB:
    """Records BatchWriteItem calls; leaves the first `unprocessed` items of each first try unprocessed."""

    def __init__(self, unprocessed: int = 0, fail_after: int | None = None) -> None:
        self.calls: list[list[dict[str, Any]]] = []
        self.written: list[dict[str, Any]] = []
        self.unprocessed = unprocessed
        self.fail_after = fail_after
        self._lock = threading.Lock()

    def batch_write_item(self, RequestItems: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
        (requests,) = RequestItems.values()
        with self._lock:
            if self.fail_after is not None and len(self.calls) >= self.fail_after:
                raise RuntimeError("throttled for good")
            self.calls.append(requests)
            kept, left = requests[self.unprocessed :], requests[: self.unprocessed]
            self.unprocessed = 0
            self.written += [request["PutRequest"]["Item"] for request in kept]
        return {"UnprocessedItems": {"subtasks": left} if left else {}}


def _items(count: int) -> list[dict[str, Any]]:
    return [{"partition": {"S": "t#00"}, "contact_id": {"S": f"ct_{n:04d}"}} for n in range(count)]


@pytest.mark.parametrize("in_flight", [1, 4])
def test_puts_go_in_groups_of_25_and_every_item_is_written_once(in_flight: int) -> None:
    dynamodb = _FakeDynamoDB()

    put_wire_items(dynamodb, "subtasks", _items(110), FakeClock(), in_flight=in_flight)

    assert sorted(len(call) for call in dynamodb.calls) == [10, 25, 25, 25, 25]
    assert sorted(item["contact_id"]["S"] for item in dynamodb.written) == [f"ct_{n:04d}" for n in range(110)]


def test_unprocessed_items_are_retried_after_a_backoff() -> None:
    dynamodb, clock = _FakeDynamoDB(unprocessed=3), FakeClock()

    put_wire_items(dynamodb, "subtasks", _items(BATCH_WRITE_LIMIT), clock)

    assert [len(call) for call in dynamodb.calls] == [25, 3]
    assert len(dynamodb.written) == 25
    assert len(clock.slept) == 1


def test_a_failed_group_fails_the_whole_put() -> None:
    dynamodb = _FakeDynamoDB(fail_after=2)

    with pytest.raises(RuntimeError, match="throttled"):
        put_wire_items(dynamodb, "subtasks", _items(200), FakeClock(), in_flight=4)
