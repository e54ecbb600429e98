"""The template's Lambda functions, run in this process: each handler imported from its CodeUri (with
the core layer on the path, as the Lambda runtime would have it) and called with a Lambda-like
context whose remaining time counts down from the function's Timeout."""

from __future__ import annotations

import importlib
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from local_runner.template import REPO_ROOT, function_arn, function_events, resources_of_type

DEFAULT_TIMEOUT_SECONDS = 3  # SAM's default when neither the function nor Globals set one
DEFAULT_MEMORY_MB = 128


class Handler(Protocol):
    def __call__(self, event: dict[str, Any], context: Any) -> Any: ...


Invoke = Callable[[str, dict[str, Any]], Any]  # (function logical id, event) -> the handler's result


@dataclass(frozen=True)
class FunctionSpec:
    logical_id: str
    code_dir: Path
    module: str
    attribute: str
    layer_dirs: tuple[Path, ...]
    timeout_seconds: float
    memory_mb: int

    @property
    def arn(self) -> str:
        return function_arn(self.logical_id)


class LocalContext:
    """What a handler reads from Lambda's context object."""

    def __init__(self, spec: FunctionSpec) -> None:
        self.function_name = spec.logical_id
        self.function_version = "$LATEST"
        self.invoked_function_arn = spec.arn
        self.memory_limit_in_mb = spec.memory_mb
        self.aws_request_id = str(uuid.uuid4())
        self.log_group_name = f"/aws/lambda/{spec.logical_id}"
        self.log_stream_name = f"local/{self.aws_request_id}"
        self._deadline = time.monotonic() + spec.timeout_seconds

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def function_specs(template: dict[str, Any]) -> dict[str, FunctionSpec]:
    """Every AWS::Serverless::Function of the template, by logical id."""
    defaults = template.get("Globals", {}).get("Function", {})
    layers = resources_of_type(template, "AWS::Serverless::LayerVersion")
    specs = {}
    for logical_id, props in resources_of_type(template, "AWS::Serverless::Function").items():
        module, _, attribute = props["Handler"].rpartition(".")
        specs[logical_id] = FunctionSpec(
            logical_id=logical_id,
            code_dir=REPO_ROOT / props["CodeUri"],
            module=module,
            attribute=attribute,
            layer_dirs=tuple(
                REPO_ROOT / layers[ref["Ref"]]["ContentUri"]
                for ref in props.get("Layers", defaults.get("Layers", []))
                if isinstance(ref, dict) and ref.get("Ref") in layers
            ),
            timeout_seconds=float(props.get("Timeout", defaults.get("Timeout", DEFAULT_TIMEOUT_SECONDS))),
            memory_mb=int(props.get("MemorySize", defaults.get("MemorySize", DEFAULT_MEMORY_MB))),
        )
    return specs


def function_for_arn(specs: dict[str, FunctionSpec], arn: str) -> FunctionSpec | None:
    """The function an ARN (or a bare function name) names; locally a function is named by its id."""
    name = arn.split(":function:", 1)[-1].split(":", 1)[0]
    return specs.get(name)


def load_handler(spec: FunctionSpec) -> Handler:
    """Imports the handler the way the Lambda runtime does: code dir and layers on sys.path.

    Handler modules have distinct names (api_handler, planner_handler, ...), so they share one
    interpreter without clashing; each keeps its cold-start state (settings, clients) for the
    runner's lifetime, as a warm Lambda would."""
    for directory in (*spec.layer_dirs, spec.code_dir):
        if str(directory) not in sys.path:
            sys.path.insert(0, str(directory))
    module = importlib.import_module(spec.module)
    handler: Handler = getattr(module, spec.attribute)
    return handler


def api_functions(template: dict[str, Any]) -> set[str]:
    """Functions behind API routes. Powertools' resolver keeps the current event on a module-level
    app, so the runner gives each of them one event at a time (as one Lambda instance would)."""
    return {logical_id for logical_id, _ in function_events(template, "Api")}
