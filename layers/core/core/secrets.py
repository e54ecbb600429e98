"""Secrets the functions resolve once, at cold start. In AWS their environment carries only a
secret's ARN (never its value); Powertools Parameters reads the value from Secrets Manager."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.utilities.parameters import SecretsProvider

from core.settings import Settings


def resolve_signing_key(settings: Settings, secretsmanager: Any) -> Settings:
    """The settings with `unsubscribe_signing_key` read from the secret that
    `unsubscribe_signing_key_secret_arn` names, through the given Secrets Manager client. Without an
    ARN (tests and tools that set UNSUBSCRIBE_SIGNING_KEY themselves) the settings come back as they
    are. A secret that cannot be read fails the cold start: no email may carry a link signed with a
    key the API does not verify."""
    arn = settings.unsubscribe_signing_key_secret_arn
    if not arn:
        return settings
    # Read once per container, so Powertools' own cache has nothing to add: always fetch.
    key = SecretsProvider(boto3_client=secretsmanager).get(arn, force_fetch=True)
    if not isinstance(key, str) or not key:
        raise ValueError(f"secret {arn} holds no text: the unsubscribe signing key must be a non-empty string")
    return settings.model_copy(update={"unsubscribe_signing_key": key})
