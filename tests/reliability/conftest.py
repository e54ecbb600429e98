"""The reliability suite's world: two populated tenants behind the in-process API gateway. (Its request
counts are printed by tests/conftest.py, which also gathers them from pytest-xdist's workers.)"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import boto3
import pytest
from moto import mock_aws

from local_runner.template import create_resources
from tests.conftest import ApiClient
from tests.reliability.gateway import api_gateway
from tests.reliability.world import World, populate


@pytest.fixture
def new_world(
    api: ApiClient, planner: Any, resource_maker: tuple[boto3.Session, dict[str, Any]]
) -> Callable[..., World]:
    """Builds the world afresh on the test's in-process AWS, emptied first: the given tenants, each
    with a sender, contacts, a template and a planned (queued) task."""
    import api_context

    signing_key = api_context.deps().settings.unsubscribe_signing_key
    built = 0

    def build(tenants: tuple[str, ...] = ("alice",)) -> World:
        nonlocal built
        if built:  # the `aws` fixture made the resources for the first one
            mock_aws().reset()  # every backend emptied; the same resources made again from the template
            create_resources(*resource_maker)  # as the `aws` fixture does
        built += 1
        populated = populate(api_gateway(), signing_key, tenants)
        planner.drain()
        return populated

    return build


@pytest.fixture
def world(new_world: Callable[..., World]) -> World:
    return new_world()
