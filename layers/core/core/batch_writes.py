"""BatchWriteItem puts, as the planner and the dispatcher both write subtasks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pynamodb.models import Model

from core.clock import Clock, backoff

BATCH_WRITE_LIMIT = 25  # DynamoDB's BatchWriteItem maximum
MAX_WRITE_ATTEMPTS = 8


def put_items(dynamodb: Any, table: str, items: Sequence[Model], clock: Clock) -> None:
    """Puts `items` in groups of 25, retrying unprocessed items with jittered exponential backoff;
    raises when some stay unprocessed (the caller's unit of work is then retried or recovered)."""
    for start in range(0, len(items), BATCH_WRITE_LIMIT):
        requests = [{"PutRequest": {"Item": item.serialize()}} for item in items[start : start + BATCH_WRITE_LIMIT]]
        for attempt in range(MAX_WRITE_ATTEMPTS):
            reply = dynamodb.batch_write_item(RequestItems={table: requests})
            requests = reply.get("UnprocessedItems", {}).get(table, [])
            if not requests:
                break
            clock.sleep(backoff(attempt))
        else:
            raise RuntimeError(f"{len(requests)} items stayed unprocessed in {table}")
