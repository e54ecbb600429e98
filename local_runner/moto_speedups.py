"""Makes moto's DynamoDB answer item-bearing calls quickly, without changing what it answers.

Moto 5.2 serializes every response by walking the botocore output shape attribute by attribute;
for DynamoDB items (maps of typed values) that costs milliseconds per item, so a 500-item Query
takes seconds, far slower than real DynamoDB and slow enough to distort tests and benchmarks.
For the data-plane operations below, moto's result is already the wire format (`dynamo_to_dict`),
so we send it as JSON directly. Moto's own storage, conditions and errors are untouched; every
other operation keeps moto's serializer.

Moto also sorts and compares items through `DynamoType.cast_value`, a chain of type checks that
dominates Query time on large tables; scalar types get the same value through a short path."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

_FAST_OPERATIONS = frozenset(
    {
        "GetItem",
        "PutItem",
        "UpdateItem",
        "DeleteItem",
        "Query",
        "Scan",
        "BatchGetItem",
        "BatchWriteItem",
        "TransactGetItems",
    }
)
_installed = False


def install() -> None:
    """Idempotent; call before moto handles its first request (tests, the embedded server)."""
    global _installed
    if _installed:
        return
    from moto.dynamodb.responses import DynamoResult

    original = DynamoResult.execute_result

    def execute_result(self: Any, context: Any) -> Any:
        if context.operation_model.name in _FAST_OPERATIONS and isinstance(self.result, dict):
            headers = {"Content-Type": "application/x-amz-json-1.0"}
            return 200, headers, json.dumps(self.result)
        return original(self, context)

    DynamoResult.execute_result = execute_result  # type: ignore[method-assign]

    from moto.dynamodb.models.dynamo_type import DynamoType

    slow_cast_value = DynamoType.__dict__["cast_value"].fget  # the property's getter

    def cast_value(self: Any) -> Any:
        kind = self.type
        if kind == "S" or kind == "B" or kind == "BOOL":
            return self.value
        if kind == "N":
            return Decimal(self.value)
        return slow_cast_value(self)

    DynamoType.cast_value = property(cast_value)  # type: ignore[method-assign,assignment]
    _installed = True
