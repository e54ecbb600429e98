"""Concurrency tests run against a single-threaded moto server in its own process (see
local_runner/moto_server.py), where every request is atomic as in real AWS, never against
in-process `mock_aws`, whose unlocked backends over-admit concurrent conditional writes."""

from __future__ import annotations

from collections.abc import Iterator

import boto3
import pytest
from moto.core.models import botocore_stubber

from core.secrets import resolve_signing_key
from core.settings import Settings
from core.storage.models import bind_tables
from local_runner.moto_server import EmbeddedAws
from local_runner.template import create_resources, environment_for


@pytest.fixture(scope="session")
def embedded_aws() -> Iterator[EmbeddedAws]:
    """One server for the whole session, holding the template's tables and queues: under pytest-xdist
    one per worker, each on a free port of its own, so workers never share state."""
    with EmbeddedAws() as server, pytest.MonkeyPatch.context() as patch:
        for key, value in server.environment().items():
            patch.setenv(key, value)
        create_resources(boto3.Session())
        patch.undo()  # the endpoint is set only while a test uses `aws_server`
        yield server


@pytest.fixture
def aws_server(embedded_aws: EmbeddedAws, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """The server with fresh state (reset, the template's resources recreated) and, for this test
    only, boto3 and the PynamoDB models pointed at it; yields the functions' settings."""
    assert not botocore_stubber.enabled, "in-process mock_aws is active: it would intercept every call"
    embedded_aws.reset()
    for key, value in embedded_aws.environment().items():
        monkeypatch.setenv(key, value)
    created = create_resources(boto3.Session())
    for key, value in environment_for(created).items():
        monkeypatch.setenv(key, value)
    settings = resolve_signing_key(Settings(), boto3.client("secretsmanager"))  # as the functions do
    bind_tables(settings)  # drops cached PynamoDB connections, so they pick up the endpoint
    yield settings
    monkeypatch.undo()
    bind_tables(Settings())  # and drops the ones bound to the server
