"""Reads template.yaml and creates the resources it declares on whatever endpoint boto3 is
configured for (in-process moto in tests, the embedded moto server in the local runner), so tests
and the local runner cannot drift from the template."""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import string
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
TEMPLATE_PATH = REPO_ROOT / "template.yaml"

# Functions are not deployed locally; `!GetAtt <Function>.Arn` and `!GetAtt <Role>.Arn` resolve to
# ARNs of this shape, which nothing calls (the local runner invokes handlers in-process).
LOCAL_ACCOUNT = "123456789012"
LOCAL_REGION = "us-east-1"


# libyaml's loader when this yaml has it (about ten times faster: tests load the template often).
class _CfnLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
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


def function_arn(logical_id: str) -> str:
    """A template function's ARN locally: functions are named by their logical id."""
    return f"arn:aws:lambda:{LOCAL_REGION}:{LOCAL_ACCOUNT}:function:{logical_id}"


def secret_arn(logical_id: str) -> str:
    """A template secret's ARN locally: secrets are named by their logical id, and the ARN leaves out
    the random suffix Secrets Manager appends (a partial ARN, which GetSecretValue accepts). So it is
    the same in every fresh embedded AWS, and settings a long-lived process cached stay valid."""
    return f"arn:aws:secretsmanager:{LOCAL_REGION}:{LOCAL_ACCOUNT}:secret:{logical_id}"


def load_template(path: Path = TEMPLATE_PATH) -> dict[str, Any]:
    with path.open() as handle:
        template: dict[str, Any] = yaml.load(handle, Loader=_CfnLoader)  # noqa: S506 - safe loader subclass
        return template


def resources_of_type(template: dict[str, Any], resource_type: str) -> dict[str, dict[str, Any]]:
    return {
        logical_id: resource.get("Properties", {})
        for logical_id, resource in template["Resources"].items()
        if resource["Type"] == resource_type
    }


def function_events(template: dict[str, Any], event_type: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(function logical id, event properties) for every event of that type (Api, SQS, ...) that a
    serverless function of the template declares."""
    for logical_id, props in resources_of_type(template, "AWS::Serverless::Function").items():
        for event in props.get("Events", {}).values():
            if event["Type"] == event_type:
                yield logical_id, event.get("Properties", {})


# ------------------------------------------------------------------ parameters and conditions

# AWS pseudo parameters as they read locally.
PSEUDO_PARAMETERS = {
    "AWS::Region": LOCAL_REGION,
    "AWS::AccountId": LOCAL_ACCOUNT,
    "AWS::Partition": "aws",
    "AWS::StackName": "local",
    "AWS::URLSuffix": "amazonaws.com",
}
_SUB_VARIABLE = re.compile(r"\$\{([^}!][^}]*)\}")


def resolve_parameters(value: Any, template: dict[str, Any]) -> str | None:
    """A value built from literals, parameters (their defaults), pseudo parameters, `!Sub`, `!If` and
    its conditions, as CloudFormation would with no parameter overridden; None when it needs
    anything else (a resource's attribute, a parameter without a default)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    if not isinstance(value, dict) or len(value) != 1:
        return None
    ((function, argument),) = value.items()
    if function == "Ref":
        return _parameter(str(argument), template)
    if function == "Fn::Sub":
        text, variables = (argument, {}) if isinstance(argument, str) else (argument[0], argument[1])
        missing = False

        def substitute(found: re.Match[str]) -> str:
            nonlocal missing
            name = found.group(1)
            resolved = (
                resolve_parameters(variables[name], template) if name in variables else _parameter(name, template)
            )
            missing = missing or resolved is None
            return resolved or ""

        result = _SUB_VARIABLE.sub(substitute, str(text)).replace("${!", "${")
        return None if missing else result
    if function == "Fn::If":
        condition, when_true, when_false = argument
        holds = condition_holds(str(condition), template)
        if holds is None:
            return None
        return resolve_parameters(when_true if holds else when_false, template)
    return None


def _parameter(name: str, template: dict[str, Any]) -> str | None:
    if name in PSEUDO_PARAMETERS:
        return PSEUDO_PARAMETERS[name]
    parameter = template.get("Parameters", {}).get(name)
    if parameter is None or "Default" not in parameter:
        return None
    return resolve_parameters(parameter["Default"], template)


def condition_holds(name: str, template: dict[str, Any]) -> bool | None:
    """A named condition of the template with every parameter at its default; None when it cannot
    be told locally."""
    return _condition(template.get("Conditions", {}).get(name), template)


def _condition(expression: Any, template: dict[str, Any]) -> bool | None:
    if not isinstance(expression, dict) or len(expression) != 1:
        return None
    ((function, argument),) = expression.items()
    if function == "Condition":
        return condition_holds(str(argument), template)
    if function == "Fn::Equals":
        left, right = (resolve_parameters(side, template) for side in argument)
        return None if left is None or right is None else left == right
    parts = [_condition(part, template) for part in argument] if isinstance(argument, list) else []
    if None in parts or not parts:
        return None
    if function == "Fn::Not":
        return not parts[0]
    if function == "Fn::And":
        return all(parts)
    if function == "Fn::Or":
        return any(parts)
    return None


# ------------------------------------------------------------------ schedules declared on functions


@dataclass(frozen=True)
class DeclaredSchedule:
    """A `ScheduleV2` (EventBridge Scheduler) or `Schedule` (EventBridge rule) event of a template
    function: AWS creates it with the stack, so the local runner fires it itself (local_runner/triggers.py)."""

    function: str  # the function's logical id
    name: str  # "<function>.<event name>"
    expression: str | None  # resolved; None when it cannot be resolved locally
    event: dict[str, Any]  # what the function receives
    enabled: bool


def declared_schedules(template: dict[str, Any]) -> list[DeclaredSchedule]:
    schedules = []
    for logical_id, props in resources_of_type(template, "AWS::Serverless::Function").items():
        for event_name, event in props.get("Events", {}).items():
            kind = event.get("Type")
            if kind not in ("ScheduleV2", "Schedule"):
                continue
            properties = event.get("Properties", {})
            expression = resolve_parameters(
                properties.get("ScheduleExpression" if kind == "ScheduleV2" else "Schedule"), template
            )
            state = resolve_parameters(properties.get("State", "ENABLED"), template)
            enabled = state == "ENABLED" and properties.get("Enabled", True) is not False
            schedules.append(
                DeclaredSchedule(
                    function=logical_id,
                    name=f"{logical_id}.{event_name}",
                    expression=expression,
                    event=_schedule_event(kind, properties, logical_id, event_name, template),
                    enabled=enabled,
                )
            )
    return schedules


def _schedule_event(
    kind: str, properties: dict[str, Any], function: str, event_name: str, template: dict[str, Any]
) -> dict[str, Any]:
    """Its `Input` (a JSON text) when it has one; else what AWS sends: EventBridge Scheduler an empty
    object, an EventBridge rule its scheduled event (without the per-fire `id` and `time`)."""
    text = resolve_parameters(properties.get("Input"), template) if "Input" in properties else None
    if text is not None:
        event: dict[str, Any] = json.loads(text)
        return event
    if kind == "ScheduleV2":
        return {}
    return {
        "version": "0",
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": LOCAL_ACCOUNT,
        "region": LOCAL_REGION,
        "resources": [f"arn:aws:events:{LOCAL_REGION}:{LOCAL_ACCOUNT}:rule/{function}{event_name}"],
        "detail": {},
    }


# ------------------------------------------------------------------ resources


@dataclass(frozen=True)
class CreatedResources:
    table_names: dict[str, str]  # logical id -> table name
    queue_urls: dict[str, str]  # logical id -> queue url
    queue_arns: dict[str, str] = field(default_factory=dict)  # logical id -> queue ARN
    schedule_groups: dict[str, str] = field(default_factory=dict)  # logical id -> group name
    secrets: dict[str, str] = field(default_factory=dict)  # logical id -> the secret's value
    topic_arns: dict[str, str] = field(default_factory=dict)  # logical id -> SNS topic ARN
    buckets: dict[str, str] = field(default_factory=dict)  # logical id -> bucket name


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
        try:
            dynamodb.create_table(**request)
        except dynamodb.exceptions.ResourceInUseException:  # a server reused between runs
            names[logical_id] = logical_id
            continue
        ttl = props.get("TimeToLiveSpecification")
        if ttl and ttl.get("Enabled"):
            dynamodb.update_time_to_live(
                TableName=logical_id,
                TimeToLiveSpecification={"AttributeName": ttl["AttributeName"], "Enabled": True},
            )
        names[logical_id] = logical_id
    return names


def create_queues(sqs: Any, template: dict[str, Any]) -> dict[str, str]:
    urls: dict[str, str] = {}
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


def create_schedule_groups(scheduler: Any, template: dict[str, Any]) -> dict[str, str]:
    """EventBridge Scheduler groups, named after their logical id (as tables and queues are)."""
    names = {}
    for logical_id in resources_of_type(template, "AWS::Scheduler::ScheduleGroup"):
        with contextlib.suppress(scheduler.exceptions.ConflictException):  # a server reused between runs
            scheduler.create_schedule_group(Name=logical_id)
        names[logical_id] = logical_id
    return names


def generated_secret(properties: dict[str, Any]) -> str:
    """A fresh random value for a secret with GenerateSecretString, of its PasswordLength (32 by
    default, as in Secrets Manager), from letters and digits: the other options only narrow it."""
    length = int((properties.get("GenerateSecretString") or {}).get("PasswordLength", 32))
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(length))


def create_secrets(secretsmanager: Any, template: dict[str, Any]) -> dict[str, str]:
    """Every Secrets Manager secret, named after its logical id, with a value generated here (so no
    key is ever written down for local runs); on a reused server the secret keeps its value, so links
    it signed still verify. Returns logical id -> value."""
    values = {}
    for logical_id, props in resources_of_type(template, "AWS::SecretsManager::Secret").items():
        with contextlib.suppress(secretsmanager.exceptions.ResourceExistsException):  # a server reused between runs
            secretsmanager.create_secret(Name=logical_id, SecretString=generated_secret(props))
        values[logical_id] = secretsmanager.get_secret_value(SecretId=logical_id)["SecretString"]
    return values


def create_topics(sns: Any, template: dict[str, Any], queue_arns: dict[str, str]) -> dict[str, str]:
    """SNS topics, named after their logical id, and their SQS subscriptions (moto's SNS delivers
    to moto's SQS, in the SNS envelope unless the subscription asks for raw delivery). Returns
    logical id -> topic ARN."""
    arns = {
        logical_id: sns.create_topic(Name=logical_id)["TopicArn"]  # idempotent: a reused server keeps it
        for logical_id in resources_of_type(template, "AWS::SNS::Topic")
    }
    existing = {
        (subscription["TopicArn"], subscription["Endpoint"])
        for topic_arn in arns.values()
        for subscription in sns.list_subscriptions_by_topic(TopicArn=topic_arn)["Subscriptions"]
    }
    for props in resources_of_type(template, "AWS::SNS::Subscription").values():
        topic = (props.get("TopicArn") or {}).get("Ref")
        endpoint = (props.get("Endpoint") or {}).get("Fn::GetAtt", [None])[0]
        if props.get("Protocol") != "sqs" or topic not in arns or endpoint not in queue_arns:
            continue  # e-mail subscriptions (the alarm topic's) have no local meaning
        if (arns[topic], queue_arns[endpoint]) in existing:
            continue
        raw = "true" if props.get("RawMessageDelivery") in (True, "true") else "false"
        sns.subscribe(
            TopicArn=arns[topic],
            Protocol="sqs",
            Endpoint=queue_arns[endpoint],
            Attributes={"RawMessageDelivery": raw},
        )
    return arns


def bucket_name(logical_id: str) -> str:
    """A template bucket's name locally: its logical id in lower case (S3 names have no capitals)."""
    return logical_id.lower()


def create_buckets(s3: Any, template: dict[str, Any], queue_arns: dict[str, str]) -> dict[str, str]:
    """Every S3 bucket, named after its logical id, with its notifications to the template's queues
    (moto delivers ObjectCreated events to them, as S3 does). Encryption, public access, lifecycle,
    CORS and bucket policies are AWS-side guards that the embedded AWS does not enforce."""
    names = {}
    for logical_id, props in resources_of_type(template, "AWS::S3::Bucket").items():
        name = bucket_name(logical_id)
        with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou, s3.exceptions.BucketAlreadyExists):
            s3.create_bucket(Bucket=name)
        queues = [
            {
                "QueueArn": queue_arns[entry["Queue"]["Fn::GetAtt"][0]],
                "Events": [entry["Event"]],
                "Filter": {"Key": {"FilterRules": entry.get("Filter", {}).get("S3Key", {}).get("Rules", [])}},
            }
            for entry in (props.get("NotificationConfiguration") or {}).get("QueueConfigurations", [])
        ]
        if queues:
            s3.put_bucket_notification_configuration(
                Bucket=name, NotificationConfiguration={"QueueConfigurations": queues}
            )
        names[logical_id] = name
    return names


def create_resources(session: Any, template: dict[str, Any] | None = None) -> CreatedResources:
    """Create every table, queue, schedule group, secret, SNS topic (with its queue subscriptions) and
    S3 bucket (with its notifications) of the template through the given session."""
    template = template or load_template()
    tables = create_tables(session.client("dynamodb"), template)
    sqs = session.client("sqs")
    queues = create_queues(sqs, template)
    arns = {
        logical_id: sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        for logical_id, url in queues.items()
    }
    groups = create_schedule_groups(session.client("scheduler"), template)
    secret_values = create_secrets(session.client("secretsmanager"), template)
    topics = create_topics(session.client("sns"), template, arns)
    buckets = create_buckets(session.client("s3"), template, arns)
    return CreatedResources(
        table_names=tables,
        queue_urls=queues,
        queue_arns=arns,
        schedule_groups=groups,
        secrets=secret_values,
        topic_arns=topics,
        buckets=buckets,
    )


def _resolve(value: Any, template: dict[str, Any], created: CreatedResources) -> str | None:
    """An environment value with its Ref / GetAtt resolved locally; None when it has no local
    meaning (a parameter without a default, a !Sub), so the settings' own default applies."""
    if not isinstance(value, dict):
        return str(value)
    if "Ref" in value:
        ref = value["Ref"]
        parameter = template.get("Parameters", {}).get(ref)
        for names in (created.table_names, created.queue_urls, created.schedule_groups, created.buckets):
            if ref in names:
                return names[ref]
        if ref in created.secrets:
            return secret_arn(ref)
        if ref in created.topic_arns:
            return created.topic_arns[ref]
        if parameter is not None and "Default" in parameter:
            return str(parameter["Default"])
        return None
    if "Fn::GetAtt" in value:
        logical_id, attribute = value["Fn::GetAtt"]
        resource_type = template["Resources"].get(logical_id, {}).get("Type")
        if attribute != "Arn":
            return None
        if logical_id in created.queue_arns:
            return created.queue_arns[logical_id]
        if resource_type == "AWS::Serverless::Function":
            return function_arn(logical_id)
        if resource_type == "AWS::IAM::Role":
            return f"arn:aws:iam::{LOCAL_ACCOUNT}:role/{logical_id}"
    return None


def environment_for(created: CreatedResources, functions: Iterable[str] = ()) -> dict[str, str]:
    """The environment variables the template's Globals give every function, resolved; then those
    each of `functions` (logical ids) declares itself, which win as they do in AWS. A secret is
    given by its ARN only, as in AWS: the functions read its value at cold start (core/secrets.py)."""
    template = load_template()
    variables = dict(template["Globals"]["Function"]["Environment"]["Variables"])
    for function in functions:
        properties = template["Resources"][function]["Properties"]
        variables.update(properties.get("Environment", {}).get("Variables", {}))
    resolved = {}
    for key, value in variables.items():
        text = _resolve(value, template, created)
        if text is not None:
            resolved[key] = text
    return resolved
