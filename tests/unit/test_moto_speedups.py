"""local_runner.moto_speedups changes how fast moto answers, never what: the same DynamoDB calls
(update expressions that pass and that fail each check, transactions that commit and that roll
back) give the same replies and leave the same tables with the speedups as without them.

The reference runs this file as a script in a fresh interpreter, where nothing installs them."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import boto3
from botocore.exceptions import ClientError
from moto import mock_aws

REPO_ROOT = Path(__file__).resolve().parents[2]
CONTACTS, USERS = "ContactsTable", "UsersTable"


def contact(user_id: str, contact_id: str) -> dict[str, Any]:
    return {"user_id": {"S": user_id}, "contact_id": {"S": contact_id}}


def user(user_id: str) -> dict[str, Any]:
    return {"user_id": {"S": user_id}}


def update(
    table: str, key: dict[str, Any], expression: str, names: dict[str, str] | None = None, **values: Any
) -> dict[str, Any]:
    call: dict[str, Any] = {"TableName": table, "Key": key, "UpdateExpression": expression}
    if names:
        call["ExpressionAttributeNames"] = names
    if values:
        call["ExpressionAttributeValues"] = {f":{name}": value for name, value in values.items()}
    return call


def twice(call: dict[str, Any]) -> list[dict[str, Any]]:
    """The same call again: the second meets what the first left kept (a parse, a passed check)."""
    return [call, call]


MERGE = "SET #0 = :0, #1 = if_not_exists (#1, :1), #2 = if_not_exists (#2, :2)"
MERGE_NAMES = {"#0": "email", "#1": "status", "#2": "tags"}
S, L = {"S": "x@example.com"}, {"L": [{"S": "a"}]}


def update_calls() -> list[dict[str, Any]]:
    """Each expression more than once, so that a kept parse or a kept check is reused, and the
    same expression with other names or on another table, where a check must fail again."""
    merge = {"0": S, "1": {"S": "subscribed"}, "2": L}
    return [
        update(CONTACTS, contact("u1", "k1"), "SET email = :v", v=S),  # the transactions' condition item
        *twice(update(CONTACTS, contact("u1", "c1"), MERGE, MERGE_NAMES, **merge)),
        update(CONTACTS, contact("u1", "c2"), MERGE, MERGE_NAMES, **merge),
        update(CONTACTS, contact("u1", "c3"), MERGE, {**MERGE_NAMES, "#2": "email"}, **merge),  # overlap
        update(CONTACTS, contact("u1", "c3"), MERGE, {**MERGE_NAMES, "#0": "contact_id"}, **merge),  # key
        update(USERS, user("u1"), MERGE, {**MERGE_NAMES, "#0": "contact_id"}, **merge),  # not a key here
        update(USERS, user("u1"), MERGE, {**MERGE_NAMES, "#0": "user_id"}, **merge),  # key here
        update(CONTACTS, contact("u1", "c1"), MERGE, MERGE_NAMES, **{**merge, "2": {"S": "not a list"}}),
        update(CONTACTS, contact("u1", "c1"), MERGE, MERGE_NAMES, **{"0": S, "1": {"S": "x"}}),  # :2 missing
        *twice(update(CONTACTS, contact("u1", "c1"), "SET a = :v SET b = :v", v=S)),
        update(CONTACTS, contact("u1", "c1"), "SET a = :v REMOVE a", v=S),
        *twice(update(CONTACTS, contact("u1", "c1"), "SET = :v", v=S)),
        *twice(
            update(
                CONTACTS,
                contact("u1", "c1"),
                "SET #l = list_append(if_not_exists(#l, :e), :m)",
                {"#l": "l"},
                e={"L": []},
                m=L,
            )
        ),
        update(CONTACTS, contact("u1", "c1"), "ADD n :one, s :set", one={"N": "1"}, set={"SS": ["a", "b"]}),
        update(CONTACTS, contact("u1", "c1"), "ADD n :one, s :set", one={"N": "1"}, set={"SS": ["c"]}),
        update(CONTACTS, contact("u1", "c1"), "SET n = n + :one, m = :m", one={"N": "2"}, m={"M": {"x": S}}),
        update(CONTACTS, contact("u1", "c1"), "SET m.x = :v, m.y = :v", v={"N": "3"}),
        update(CONTACTS, contact("u1", "c1"), "SET m.absent.y = :v", v={"N": "3"}),
        update(CONTACTS, contact("u1", "c1"), "DELETE s :set REMOVE l[0], #2", {"#2": "tags"}, set={"SS": ["a"]}),
        update(CONTACTS, contact("u1", "c1"), "SET n = n + :one", one={"S": "not a number"}),
        {
            **update(CONTACTS, contact("u1", "c2"), "SET #0 = :0", {"#0": "email"}, **{"0": S}),
            "ConditionExpression": "#0 = :other",
            "ExpressionAttributeValues": {":0": S, ":other": {"S": "someone@else"}},
            "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
        },
        {
            **update(CONTACTS, contact("u1", "c2"), "SET #0 = :0", {"#0": "email"}, **{"0": S}),
            "ReturnValues": "ALL_OLD",
        },
    ]


def transactions() -> list[list[dict[str, Any]]]:
    merge = {"0": S, "1": {"S": "subscribed"}, "2": L}

    def merged(key: dict[str, Any], table: str = CONTACTS) -> dict[str, Any]:
        return {"Update": update(table, key, MERGE, MERGE_NAMES, **merge)}

    put = {"Put": {"TableName": CONTACTS, "Item": {**contact("u1", "p1"), "email": S}}}
    delete = {"Delete": {"TableName": CONTACTS, "Key": contact("u1", "c2")}}

    def check(holds: bool) -> dict[str, Any]:
        return {
            "ConditionCheck": {
                "TableName": CONTACTS,
                "Key": contact("u1", "k1"),
                "ConditionExpression": "attribute_exists(email)" if holds else "attribute_not_exists(email)",
            }
        }

    return [
        # rolled back: a condition fails after new items (one in a new partition), an update of a
        # stored item, a put and a delete
        [
            merged(contact("u2", "n1")),
            merged(contact("u1", "n2")),
            merged(contact("u1", "c1")),
            put,
            delete,
            check(False),
        ],
        [merged(contact("u2", "n1")), merged(contact("u1", "c1")), merged(contact("u1", "c1"))],  # same item twice
        # rolled back: an update of a key attribute, refused after the first item is written
        [
            merged(contact("u3", "n1")),
            {"Update": update(CONTACTS, contact("u3", "n2"), MERGE, {**MERGE_NAMES, "#0": "contact_id"}, **merge)},
        ],
        [merged(contact("u4", "n1")), {"Put": {"TableName": "NoSuchTable", "Item": contact("u4", "n9")}}],
        [merged(contact("u5", f"n{number}")) for number in range(101)],
        [
            merged(user("u1"), USERS),
            merged(user("u9"), USERS),
            {"Put": {"TableName": USERS, "Item": user("u8")}},
            check(False),
        ],
        # committed
        [
            merged(contact("u2", "n1")),
            merged(contact("u1", "n2")),
            merged(contact("u1", "c1")),
            put,
            delete,
            check(True),
        ],
        [merged(user("u1"), USERS), merged(user("u9"), USERS), {"Put": {"TableName": USERS, "Item": user("u8")}}],
    ]


def run_corpus() -> dict[str, Any]:
    """Every call's reply (or error), and the tables after each transaction, as plain data."""
    from local_runner.template import create_resources

    replies: list[Any] = []
    states: list[Any] = []
    with mock_aws():
        create_resources(boto3.Session())
        dynamodb = boto3.client("dynamodb")

        def record(call: Any) -> None:
            try:
                reply = call()
                reply.pop("ResponseMetadata", None)
                replies.append(reply)
            except ClientError as error:
                replies.append({"error": error.response["Error"], "reasons": error.response.get("CancellationReasons")})

        def state() -> dict[str, Any]:
            tables = {}
            for table in (CONTACTS, USERS):
                items = dynamodb.scan(TableName=table, ConsistentRead=True)["Items"]
                tables[table] = {
                    "items": sorted(items, key=lambda item: json.dumps(item, sort_keys=True)),
                    "count": dynamodb.describe_table(TableName=table)["Table"]["ItemCount"],
                    "u2": dynamodb.query(
                        TableName=table,
                        KeyConditionExpression="user_id = :u",
                        ExpressionAttributeValues={":u": {"S": "u2"}},
                    )["Count"],
                }
            return tables

        for arguments in update_calls():
            record(lambda arguments=arguments: dynamodb.update_item(**arguments))
        states.append(state())
        for items in transactions():
            record(lambda items=items: dynamodb.transact_write_items(TransactItems=items))
            states.append(state())
    return {"replies": replies, "states": states}


def test_the_speedups_are_on_in_the_test_process() -> None:
    from local_runner import moto_speedups

    parser = importlib.import_module("moto.dynamodb.parsing.expressions").UpdateExpressionParser
    assert moto_speedups._installed
    assert parser.make(MERGE) is parser.make(MERGE)  # a kept parse


def test_moto_answers_the_same_with_and_without_the_speedups() -> None:
    # Given the answers of moto as it is, from an interpreter without the speedups
    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    reference = subprocess.run(  # noqa: S603 - this file, with our own interpreter
        [sys.executable, __file__],
        capture_output=True,
        check=True,
        cwd=REPO_ROOT,
        env=environment,
        text=True,
        timeout=300,
    )
    # When the same calls run here, with them
    with_speedups = run_corpus()
    # Then every reply and every table is the same
    expected = json.loads(reference.stdout)
    assert json.loads(json.dumps(with_speedups, default=str)) == expected
    # (and the corpus did what it is for: updates both passed and failed, transactions both
    # committed and rolled back)
    errors = [reply["error"]["Code"] for reply in expected["replies"] if "error" in reply]
    assert {"ValidationException", "ConditionalCheckFailedException", "TransactionCanceledException"} <= set(errors)
    assert [state[CONTACTS]["u2"] for state in expected["states"]] == [0, 0, 0, 0, 0, 0, 0, 1, 1]


if __name__ == "__main__":
    from local_runner import moto_speedups

    result = run_corpus()
    assert not moto_speedups._installed, "the reference must run without the speedups"
    print(json.dumps(result, default=str))


def test_a_table_query_reads_only_its_partition_and_answers_as_dynamodb_does() -> None:
    """Pages, start keys, limits, order, key and filter conditions on one partition of a table
    holding others (moto's own query code runs on that partition's items only)."""
    with mock_aws():
        client = boto3.client("dynamodb", region_name="us-east-1")
        client.create_table(
            TableName="t",
            AttributeDefinitions=[
                {"AttributeName": "p", "AttributeType": "S"},
                {"AttributeName": "s", "AttributeType": "S"},
            ],
            KeySchema=[{"AttributeName": "p", "KeyType": "HASH"}, {"AttributeName": "s", "KeyType": "RANGE"}],
            BillingMode="PAY_PER_REQUEST",
        )
        for partition in ("a", "b", "c"):
            for n in range(30):
                item = {"p": {"S": partition}, "s": {"S": f"{n:03d}"}, "n": {"N": str(n)}}
                client.put_item(TableName="t", Item=item)

        def pages(**request: Any) -> list[list[str]]:
            found, start = [], None
            while True:
                extra = {"ExclusiveStartKey": start} if start else {}
                reply = client.query(TableName="t", Limit=7, **request, **extra)
                found.append([item["s"]["S"] for item in reply["Items"]])
                start = reply.get("LastEvaluatedKey")
                if not start:
                    return found

        every = pages(KeyConditionExpression="p = :p", ExpressionAttributeValues={":p": {"S": "b"}})
        assert [s for page in every for s in page] == [f"{n:03d}" for n in range(30)]
        assert all(len(page) == 7 for page in every[:4])
        backwards = pages(
            KeyConditionExpression="p = :p", ExpressionAttributeValues={":p": {"S": "b"}}, ScanIndexForward=False
        )
        assert [s for page in backwards for s in page] == [f"{n:03d}" for n in reversed(range(30))]
        ranged = pages(
            KeyConditionExpression="p = :p AND s BETWEEN :lo AND :hi",
            FilterExpression="n <> :skip",
            ExpressionAttributeValues={
                ":p": {"S": "b"},
                ":lo": {"S": "010"},
                ":hi": {"S": "020"},
                ":skip": {"N": "15"},
            },
        )
        assert [s for page in ranged for s in page] == [f"{n:03d}" for n in range(10, 21) if n != 15]
        none = client.query(
            TableName="t", KeyConditionExpression="p = :p", ExpressionAttributeValues={":p": {"S": "zzz"}}
        )
        assert none["Items"] == [] and none["Count"] == 0
