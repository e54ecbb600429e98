"""BatchWriteItem puts, as the planner and the dispatcher both write subtasks."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pynamodb.models import Model

from core.clock import Clock, backoff

BATCH_WRITE_LIMIT = 25  # DynamoDB's BatchWriteItem maximum
MAX_WRITE_ATTEMPTS = 8

WireItem = dict[str, Any]  # an item in DynamoDB's wire format: {"name": {"S": "..."}, ...}


def put_items(dynamodb: Any, table: str, items: Sequence[Model], clock: Clock) -> None:
    """Puts `items` in groups of 25, retrying unprocessed items with jittered exponential backoff;
    raises when some stay unprocessed (the caller's unit of work is then retried or recovered)."""
    put_wire_items(dynamodb, table, [item.serialize() for item in items], clock)


def put_wire_items(dynamodb: Any, table: str, items: Sequence[WireItem], clock: Clock, *, in_flight: int = 1) -> None:
    """As `put_items`, for items already in wire format. With `in_flight` > 1, that many
    BatchWriteItem requests are outstanding at once (boto3 clients are thread-safe), so one
    request's serialisation overlaps another's round trip; returns once every group is written,
    or raises the first failure (the other groups may or may not have been written)."""
    groups = [items[start : start + BATCH_WRITE_LIMIT] for start in range(0, len(items), BATCH_WRITE_LIMIT)]
    if in_flight <= 1 or len(groups) <= 1:
        for group in groups:
            _put_group(dynamodb, table, group, clock)
        return
    with ThreadPoolExecutor(max_workers=min(in_flight, len(groups))) as pool:
        futures = [pool.submit(_put_group, dynamodb, table, group, clock) for group in groups]
        try:
            for future in futures:
                future.result()
        finally:
            for future in futures:
                future.cancel()  # after a failure: groups not yet started are not sent


def _put_group(dynamodb: Any, table: str, group: Sequence[WireItem], clock: Clock) -> None:
    requests = [{"PutRequest": {"Item": item}} for item in group]
    for attempt in range(MAX_WRITE_ATTEMPTS):
        reply = dynamodb.batch_write_item(RequestItems={table: requests})
        requests = reply.get("UnprocessedItems", {}).get(table, [])
        if not requests:
            return
        clock.sleep(backoff(attempt))
    raise RuntimeError(f"{len(requests)} items stayed unprocessed in {table}")
