"""The unsubscribe signing key lives in Secrets Manager: the template's secret exists on the embedded
AWS with a generated value, the functions get only its ARN, and resolve the key from it at cold start."""

from __future__ import annotations

import boto3
import pytest
from aws_lambda_powertools.utilities.parameters.exceptions import GetParameterError

from core.mail.unsubscribe import sign_unsubscribe
from core.secrets import resolve_signing_key
from core.settings import Settings, load_settings
from local_runner.template import create_resources, environment_for, load_template, secret_arn
from tests.conftest import ApiClient, FakeClock

SECRET = "UnsubscribeSigningKeySecret"  # noqa: S105 - the secret's logical id


def _stored_key() -> str:
    value: str = boto3.client("secretsmanager").get_secret_value(SecretId=SECRET)["SecretString"]
    return value


def test_the_template_secret_is_created_with_a_fresh_value_of_its_length(aws: Settings) -> None:
    length = load_template()["Resources"][SECRET]["Properties"]["GenerateSecretString"]["PasswordLength"]

    key = _stored_key()

    assert len(key) == length and key.isalnum()
    assert key != Settings.model_fields["unsubscribe_signing_key"].default


def test_each_new_embedded_aws_gets_another_key(aws: Settings) -> None:
    first = _stored_key()
    boto3.client("secretsmanager").delete_secret(SecretId=SECRET, ForceDeleteWithoutRecovery=True)

    create_resources(boto3.Session())

    assert _stored_key() != first


def test_functions_get_the_secret_arn_not_the_key_from_the_template(aws: Settings) -> None:
    created = create_resources(boto3.Session())  # a reused server: the secret keeps its value

    environment = environment_for(created, functions=("ApiFunction", "DispatcherFunction"))

    assert environment["UNSUBSCRIBE_SIGNING_KEY_SECRET_ARN"] == secret_arn(SECRET)
    assert created.secrets[SECRET] == _stored_key()


def test_the_key_is_read_from_the_secret_the_arn_names(aws: Settings) -> None:
    settings = Settings(unsubscribe_signing_key="plain", unsubscribe_signing_key_secret_arn=secret_arn(SECRET))

    resolved = resolve_signing_key(settings, boto3.client("secretsmanager"))

    assert resolved.unsubscribe_signing_key == _stored_key()
    assert resolved.users_table == settings.users_table


def test_without_an_arn_the_plain_key_stays(aws: Settings) -> None:
    settings = Settings(unsubscribe_signing_key="plain-key-for-tests", unsubscribe_signing_key_secret_arn="")

    assert resolve_signing_key(settings, boto3.client("secretsmanager")) is settings


def test_a_secret_that_cannot_be_read_fails_the_cold_start(aws: Settings) -> None:
    settings = Settings(unsubscribe_signing_key_secret_arn=secret_arn("NoSuchSecret"))

    with pytest.raises(GetParameterError):
        resolve_signing_key(settings, boto3.client("secretsmanager"))


def test_the_api_verifies_links_signed_with_the_stored_key_not_the_plain_one(
    aws: Settings, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a plain key in the environment that differs from the stored one
    monkeypatch.setenv("UNSUBSCRIBE_SIGNING_KEY", "plain-key-that-must-not-be-used-0123")
    load_settings.cache_clear()
    try:
        api = ApiClient(clock)
        plain = sign_unsubscribe("plain-key-that-must-not-be-used-0123", "alice", "ct_1", "task_1")
        stored = sign_unsubscribe(_stored_key(), "alice", "ct_1", "task_1")

        # Then only links signed with the secret's value verify
        assert api.get("/unsubscribe", user=None, query=f"token={plain}").status == 422
        assert api.get("/unsubscribe", user=None, query=f"token={stored}").status == 200
    finally:
        load_settings.cache_clear()  # later tests' settings must not keep this plain key
