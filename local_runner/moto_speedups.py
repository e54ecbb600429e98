"""Makes moto's DynamoDB answer quickly, without changing what it answers.

Moto 5.2 is slow in places real DynamoDB is not, enough to distort tests and benchmarks. Each
patch below keeps moto's own storage, conditions and errors, and only skips work whose result is
already known:

- Responses. Moto serializes every response by walking the botocore output shape attribute by
  attribute; for DynamoDB items that costs milliseconds per item (a 500-item Query took seconds).
  For the data-plane operations below moto's result is already the wire format (`dynamo_to_dict`),
  so it is sent as JSON directly; every other operation keeps moto's serializer.
- Comparisons. Moto sorts and compares items through `DynamoType.cast_value`, a chain of type
  checks; scalar types get the same value through a short path.
- Requests. For every request moto's server lists its own package folder from disk and walks the
  handler class with `inspect.getmembers`; both answers are fixed once moto is imported.
- Update expressions. Each UpdateItem parsed its UpdateExpression twice, deep-copied the tree and
  walked it with ten processors through abstract-class `isinstance` checks, most of the ~8 ms the
  contact import's expression cost. A parse is kept per expression string (moto only reads it, and
  copies it before validating) and copied by unpickling a stored pickle instead of `deepcopy`; the
  walks classify each node type once; the three checks that depend only on the expression, its
  attribute names and the table's keys are skipped once they have passed for those.
- Transactions. TransactWriteItems deep-copied the whole table for every item it holds (to roll
  back on failure): 100 updates into a table of 3,000 items took tens of seconds. Instead, the
  items it may write are copied beforehand and put back if it fails.
- Queries of a table (not an index). Moto gathered every item of the table, sorted them all and
  then kept the queried partition's, so each page of a 20,000-contact list cost as much as reading
  the whole table. The query runs on the queried partition's items only (moto's own code does the
  rest: order, start key, limits, conditions).
"""

from __future__ import annotations

import copy
import functools
import importlib
import json
import pickle
import threading
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass
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
_PARSED_EXPRESSIONS_KEPT = 1024
_installed = False
_install_lock = threading.Lock()


def install() -> None:
    """Idempotent; call before moto handles its first request (tests, the embedded server)."""
    global _installed
    with _install_lock:
        if _installed:
            return
        _serialize_items_directly()
        _cast_scalars_directly()
        _route_requests_from_memory()
        _keep_parsed_update_expressions()
        _classify_nodes_once()
        _roll_back_only_written_items()
        _query_one_partition()
        _installed = True


def _serialize_items_directly() -> None:
    from moto.dynamodb.responses import DynamoResult

    original = DynamoResult.execute_result

    def execute_result(self: Any, context: Any) -> Any:
        if context.operation_model.name in _FAST_OPERATIONS and isinstance(self.result, dict):
            headers = {"Content-Type": "application/x-amz-json-1.0"}
            return 200, headers, json.dumps(self.result)
        return original(self, context)

    DynamoResult.execute_result = execute_result  # type: ignore[method-assign]


def _cast_scalars_directly() -> None:
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


def _route_requests_from_memory() -> None:
    backends, responses = _moto("moto.backends"), _moto("moto.core.responses")

    modules = tuple(backends.list_of_moto_modules())  # the folders of the installed moto package

    def list_of_moto_modules() -> Iterator[str]:
        return iter(modules)

    backends.list_of_moto_modules = list_of_moto_modules
    names_of = responses.method_names_from_class
    method_names = functools.cache(lambda handler_class: tuple(names_of(handler_class)))
    responses.method_names_from_class = lambda handler_class: list(method_names(handler_class))


@dataclass(frozen=True)
class _Parse:
    expression: str
    tree: Any  # moto's parse of it, never changed: moto reads it, and copies it to validate
    pickled: bytes | None  # to copy it faster than deepcopy does


def _keep_parsed_update_expressions() -> None:
    validators = _moto("moto.dynamodb.parsing.validators")
    parser = _moto("moto.dynamodb.parsing.expressions").UpdateExpressionParser
    parse = parser.make.__func__
    by_expression: dict[str, _Parse] = {}
    by_tree: dict[int, _Parse] = {}
    lock = threading.Lock()

    def make(cls: Any, expression: str) -> Any:
        kept = by_expression.get(expression)
        if kept is None:
            tree = parse(cls, expression)  # a syntax error raises here and is not kept
            try:
                pickled: bytes | None = pickle.dumps(tree, pickle.HIGHEST_PROTOCOL)
            except (pickle.PicklingError, TypeError, AttributeError):
                pickled = None
            kept = _Parse(expression, tree, pickled)
            with lock:
                if len(by_expression) >= _PARSED_EXPRESSIONS_KEPT:
                    by_expression.clear()
                    by_tree.clear()
                by_expression[expression] = kept
                by_tree[id(tree)] = kept
        return kept.tree

    def kept_parse(tree: Any) -> _Parse | None:
        kept = by_tree.get(id(tree))
        return kept if kept is not None and kept.tree is tree else None

    def deepcopy(value: Any, memo: dict[int, Any] | None = None) -> Any:
        kept = kept_parse(value)
        if kept is not None and kept.pickled is not None:
            return pickle.loads(kept.pickled)  # noqa: S301 - our own pickle of moto's parse tree
        return copy.deepcopy(value, memo)

    parser.make = classmethod(make)
    validators.deepcopy = deepcopy  # the validator's copy of the tree, and its list_append copies
    _check_each_expression_once(validators, kept_parse)


def _check_each_expression_once(validators: Any, kept_parse: Callable[[Any], _Parse | None]) -> None:
    """The validator's first processors only check the tree as parsed against the attribute names
    and the table's keys, and change nothing (one SET/REMOVE/ADD clause of a kind, no overlapping
    paths, no key attribute updated): once they pass for an expression, names and keys, they would
    pass again."""
    pure_checks = (
        validators.ActionCountValidator,
        validators.OverlappingPathsValidator,
        validators.UpdateHashRangeKeyValidator,
    )
    validator_class = validators.UpdateExpressionValidator
    initialize = validator_class.__init__
    passed: set[Hashable] = set()

    def __init__(
        self: Any,
        expression: Any,
        expression_attribute_names: Any,
        expression_attribute_values: Any,
        item: Any,
        table: Any,
    ) -> None:
        initialize(self, expression, expression_attribute_names, expression_attribute_values, item, table)
        kept = kept_parse(expression)
        names = expression_attribute_names or {}
        if kept is not None and isinstance(names, dict) and all(isinstance(v, str) for v in names.values()):
            self._speedups_checks = (kept.expression, frozenset(names.items()), tuple(table.table_key_attrs))

    def validate(self: Any) -> Any:
        checks: Hashable | None = self.__dict__.get("_speedups_checks")
        processors = list(self.processors)
        leading = 0
        while leading < len(processors) and isinstance(processors[leading], pure_checks):
            leading += 1
        node = self.node_to_validate
        if checks is None or checks not in passed:
            for processor in processors[:leading]:
                node = processor.traverse(node)
            if checks is not None:
                passed.add(checks)
        for processor in processors[leading:]:
            node = processor.traverse(node)
        return node

    validator_class.__init__ = __init__
    validator_class.validate = validate


def _classify_nodes_once() -> None:
    """The same walks over expression trees, with each `isinstance` against moto's abstract node
    classes answered once per concrete type (moto registers no virtual subclasses)."""
    nodes = _moto("moto.dynamodb.parsing.ast_nodes")
    DepthFirstTraverser, Node = nodes.DepthFirstTraverser, nodes.Node
    Expression, UpdateExpressionFunction = nodes.Expression, nodes.UpdateExpressionFunction
    is_node: dict[type, bool] = {}
    descends: dict[type, bool] = {}
    wanted: dict[tuple[type, type], bool] = {}
    no_hook = DepthFirstTraverser.pre_processing_of_child

    def find_clauses(self: Any, clause_types: Any) -> list[Any]:
        clauses: list[Any] = []
        for child in self.children or []:
            kind = type(child)
            if kind in clause_types:
                clauses.append(child)
                continue
            inner = descends.get(kind)
            if inner is None:
                inner = descends[kind] = isinstance(child, (Expression, UpdateExpressionFunction))
            if inner:
                clauses.extend(child.find_clauses(clause_types))
        return clauses

    def nodes_to_be_processed(self: Any) -> tuple[type, ...]:
        kinds: tuple[type, ...] | None = self.__dict__.get("_speedups_kinds")
        if kinds is None:
            kinds = self.__dict__["_speedups_kinds"] = tuple(self._processing_map().keys())
        return kinds

    def traverse_node_recursively(self: Any, node: Any, child_id: int = -1) -> Any:
        kind = type(node)
        node_kind = is_node.get(kind)
        if node_kind is None:
            node_kind = is_node[kind] = isinstance(node, Node)
        if not node_kind:
            return node
        parent_node = node.parent
        if node.children is not None:
            hook = None if type(self).pre_processing_of_child is no_hook else self.pre_processing_of_child
            for i, child_node in enumerate(node.children):
                if hook is not None:
                    hook(node, i)
                self.traverse_node_recursively(child_node, i)
        key = (type(self), kind)
        processed = wanted.get(key)
        if processed is None:
            processed = wanted[key] = isinstance(node, self.nodes_to_be_processed())
        if processed:
            node = self.process(node)
            node.parent = parent_node
            if parent_node:
                parent_node.children[child_id] = node
        return node

    Node.find_clauses = find_clauses
    DepthFirstTraverser.nodes_to_be_processed = nodes_to_be_processed
    DepthFirstTraverser.traverse_node_recursively = traverse_node_recursively


def _moto(module: str) -> Any:
    """A moto module, untyped: these patches reach into its internals."""
    return importlib.import_module(module)


class _TablesNotCopied(threading.local):
    active = False


def _roll_back_only_written_items() -> None:
    """TransactWriteItems keeps moto's logic; its whole-table backups become the table itself (so
    its rollback is a no-op), and the items the transaction names are backed up and put back
    instead. A transaction on a table with a stream keeps moto's backups (records would differ)."""
    dynamodb_models = _moto("moto.dynamodb.models")
    Table = _moto("moto.dynamodb.models.table").Table

    not_copied = _TablesNotCopied()

    class CopyModule:
        """`copy` as moto.dynamodb.models sees it: the real module, except for a Table while a
        transaction runs under `transact_write_items` below."""

        def __getattr__(self, name: str) -> Any:
            return getattr(copy, name)

        @staticmethod
        def deepcopy(value: Any, memo: dict[int, Any] | None = None) -> Any:
            if not_copied.active and isinstance(value, Table):
                return value
            return copy.deepcopy(value, memo)

    dynamodb_models.copy = CopyModule()
    backend_class = dynamodb_models.DynamoDBBackend
    original = backend_class.transact_write_items

    def transact_write_items(self: Any, transact_items: list[dict[str, Any]]) -> None:
        backup = _backup_named_items(self, transact_items)
        if backup is None:
            original(self, transact_items)
            return
        not_copied.active = True
        try:
            original(self, transact_items)
        except BaseException:
            backup.restore()
            raise
        finally:
            not_copied.active = False

    backend_class.transact_write_items = transact_write_items


class _ItemsBackup:
    """Copies of the items a transaction may write, as they were (None: absent)."""

    def __init__(self) -> None:
        self.items: dict[tuple[int, Any, Any], tuple[Any, Any, Any, Any]] = {}
        self.new_partitions: dict[tuple[int, Any], tuple[Any, Any]] = {}

    def add(self, table: Any, hash_key: Any, range_key: Any) -> None:
        slot = (id(table), hash_key, range_key)
        if slot in self.items:
            return
        if range_key is None:
            item = table.items.get(hash_key)
        else:
            partition = table.items.get(hash_key)
            if partition is None:
                self.new_partitions[(id(table), hash_key)] = (table, hash_key)
            item = None if partition is None else partition.get(range_key)
        self.items[slot] = (table, hash_key, range_key, None if item is None else copy.deepcopy(item))

    def restore(self) -> None:
        for table, hash_key, range_key, item in self.items.values():
            if range_key is None:
                if item is None:
                    table.items.pop(hash_key, None)
                else:
                    table.items[hash_key] = item
            elif item is not None:
                table.items[hash_key][range_key] = item
            elif hash_key in table.items:
                table.items[hash_key].pop(range_key, None)
        for table, hash_key in self.new_partitions.values():
            if not table.items.get(hash_key, True):  # absent before and empty again: gone, as before
                del table.items[hash_key]


def _backup_named_items(backend: Any, transact_items: list[dict[str, Any]]) -> _ItemsBackup | None:
    """The backup, or None when an item's key cannot be read here (moto then answers as it does)."""
    from moto.dynamodb.models.dynamo_type import DynamoType

    backup = _ItemsBackup()
    try:
        for request in transact_items:
            for operation, details in request.items():
                table = backend.tables.get(details.get("TableName"))
                if table is None or operation not in ("Put", "Update", "Delete", "ConditionCheck"):
                    continue  # moto fails these before writing anything
                if table.stream_shard is not None:
                    return None
                key = details["Item"] if operation == "Put" else details["Key"]
                range_key = DynamoType(key[table.range_key_attr]) if table.range_key_attr else None
                backup.add(table, DynamoType(key[table.hash_key_attr]), range_key)
    except (KeyError, TypeError, AttributeError):
        return None
    return backup


class _OnePartition:
    """A table as Query sees it when the key condition names one partition: only that partition's
    items; everything else is the table's."""

    def __init__(self, table: Any, hash_key: Any) -> None:
        self._table = table
        self._hash_key = hash_key

    def __getattr__(self, name: str) -> Any:
        return getattr(self._table, name)

    def all_items(self) -> list[Any]:
        partition = self._table.items.get(self._hash_key)  # .get: the table's defaultdict grows no key
        if partition is None:
            return []
        return list(partition.values()) if self._table.range_key_attr else [partition]


def _query_one_partition() -> None:
    table_class = _moto("moto.dynamodb.models.table").Table
    query = table_class.query

    @functools.wraps(query)
    def query_one_partition(self: Any, hash_key: Any, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("index_name") is None and (len(args) < 7 or args[6] is None) and hash_key is not None:
            return query(_OnePartition(self, hash_key), hash_key, *args, **kwargs)
        return query(self, hash_key, *args, **kwargs)

    table_class.query = query_one_partition
