"""Reads template.yaml and creates the resources it declares on whatever endpoint boto3 is
configured for (in-process moto in tests, the embedded moto server in the local runner), so tests
and the local runner cannot drift from the template."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

TEMPLATE_PATH = Path(__file__).resolve().parent.parent / "template.yaml"


class _CfnLoader(yaml.SafeLoader):
    """YAML loader that keeps CloudFormation short-form intrinsics (!Ref, !GetAtt, ...) as data."""


def _intrinsic(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    name = "Ref" if suffix == "Ref" else f"Fn::{suffix}"
    value: Any
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
        if suffix == "GetAtt" and isinstance(value, str):
            value = value.split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    return {name: value}


_CfnLoader.add_multi_constructor("!", _intrinsic)


def load_template(path: Path = TEMPLATE_PATH) -> dict[str, Any]:
    with path.open() as handle:
        return yaml.load(handle, Loader=_CfnLoader)  # noqa: S506 - safe loader subclass


def resources_of_type(template: dict[str, Any], resource_type: str) -> dict[str, dict[str, Any]]:
    return {
        logical_id: resource.get("Properties", {})
        for logical_id, resource in template["Resources"].items()
        if resource["Type"] == resource_type
    }


@dataclass(frozen=True)
class CreatedResources:
    table_names: dict[str, str]  # logical id -> table name
    queue_urls: dict[str, str]  # logical id -> queue url


def create_tables(dynamodb: Any, template: dict[str, Any]) -> dict[str, str]:
    names = {}
    for logical_id, props in resources_of_type(template, "AWS::DynamoDB::Table").items():
        request: dict[str, Any] = {
            "TableName": logical_id,
            "AttributeDefinitions": props["AttributeDefinitions"],
            "KeySchema": props["KeySchema"],
            "BillingMode": props.get("BillingMode", "PAY_PER_REQUEST"),
        }
        if props.get("GlobalSecondaryIndexes"):
            request["GlobalSecondaryIndexes"] = props["GlobalSecondaryIndexes"]
        if props.get("StreamSpecification"):
            request["StreamSpecification"] = {"StreamEnabled": True, **props["StreamSpecification"]}
        dynamodb.create_table(**request)
        ttl = props.get("TimeToLiveSpecification")
        if ttl and ttl.get("Enabled"):
            dynamodb.update_time_to_live(
                TableName=logical_id,
                TimeToLiveSpecification={"AttributeName": ttl["AttributeName"], "Enabled": True},
            )
        names[logical_id] = logical_id
    return names


def create_queues(sqs: Any, template: dict[str, Any]) -> dict[str, str]:
    urls = {}
    queues = resources_of_type(template, "AWS::SQS::Queue")
    # Dead-letter queues first, so redrive policies can point at them.
    ordered = sorted(queues, key=lambda logical_id: "RedrivePolicy" in queues[logical_id])
    for logical_id in ordered:
        props = queues[logical_id]
        attributes = {}
        if "VisibilityTimeout" in props:
            attributes["VisibilityTimeout"] = str(props["VisibilityTimeout"])
        if "MessageRetentionPeriod" in props:
            attributes["MessageRetentionPeriod"] = str(props["MessageRetentionPeriod"])
        redrive = props.get("RedrivePolicy")
        if redrive:
            target = redrive["deadLetterTargetArn"]["Fn::GetAtt"][0]
            target_arn = sqs.get_queue_attributes(QueueUrl=urls[target], AttributeNames=["QueueArn"])
            attributes["RedrivePolicy"] = json.dumps(
                {
                    "deadLetterTargetArn": target_arn["Attributes"]["QueueArn"],
                    "maxReceiveCount": str(redrive["maxReceiveCount"]),
                }
            )
        urls[logical_id] = sqs.create_queue(QueueName=logical_id, Attributes=attributes)["QueueUrl"]
    return urls


def create_resources(session: Any, template: dict[str, Any] | None = None) -> CreatedResources:
    """Create every table and queue of the template through the given boto3 session."""
    template = template or load_template()
    tables = create_tables(session.client("dynamodb"), template)
    queues = create_queues(session.client("sqs"), template)
    return CreatedResources(table_names=tables, queue_urls=queues)


def environment_for(created: CreatedResources) -> dict[str, str]:
    """The environment variables the template's Globals give every function, resolved."""
    template = load_template()
    variables = template["Globals"]["Function"]["Environment"]["Variables"]
    parameters = {name: str(spec.get("Default", "")) for name, spec in template.get("Parameters", {}).items()}
    resolved = {}
    for key, value in variables.items():
        if isinstance(value, dict) and "Ref" in value:
            ref = value["Ref"]
            if ref in created.table_names:
                resolved[key] = created.table_names[ref]
            elif ref in created.queue_urls:
                resolved[key] = created.queue_urls[ref]
            elif ref in parameters:
                resolved[key] = parameters[ref]
        else:
            resolved[key] = str(value)
    return resolved
