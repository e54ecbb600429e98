"""The template's parameters and the settings the functions read agree: every parameter a function's
environment passes names a Settings field, with the same default and the same bounds (a value the
template admits is one the functions accept at cold start, and the documented default is the
one a function gets without the template)."""

from __future__ import annotations

from typing import Any

import annotated_types
import pytest

from core.settings import Settings
from local_runner.template import load_template

TEMPLATE = load_template()
PARAMETERS: dict[str, Any] = TEMPLATE["Parameters"]


def _environments() -> dict[str, dict[str, Any]]:
    found = {"Globals": TEMPLATE["Globals"]["Function"]["Environment"]["Variables"]}
    for name, resource in TEMPLATE["Resources"].items():
        variables = (resource.get("Properties") or {}).get("Environment", {}).get("Variables")
        if resource.get("Type") == "AWS::Serverless::Function" and variables:
            found[name] = variables
    return found


PASSED = sorted(
    {
        (variable, value["Ref"])
        for variables in _environments().values()
        for variable, value in variables.items()
        if isinstance(value, dict) and value.get("Ref") in PARAMETERS
    }
)


def _bounds(field: Any) -> tuple[float | None, float | None]:
    low = high = None
    for rule in field.metadata:
        if isinstance(rule, annotated_types.Ge):
            low = rule.ge
        elif isinstance(rule, annotated_types.Gt):
            low = rule.gt
        elif isinstance(rule, annotated_types.Le):
            high = rule.le
    return low, high


def test_the_template_passes_parameters_to_the_functions() -> None:
    assert len(PASSED) >= 15
    assert ("DEFERRAL_MAX_LEVEL", "DeferralMaxLevel") in PASSED


@pytest.mark.parametrize(("variable", "parameter"), PASSED)
def test_each_parameter_passed_is_a_setting_with_its_default_and_bounds(variable: str, parameter: str) -> None:
    field = Settings.model_fields.get(variable.lower())
    assert field is not None, f"{variable} (from {parameter}) is no Settings field"
    spec = PARAMETERS[parameter]
    if spec.get("Type") != "Number":
        return
    assert float(spec["Default"]) == float(field.default), (parameter, spec["Default"], field.default)
    low, high = _bounds(field)
    if "MinValue" in spec:
        assert low is not None and float(spec["MinValue"]) >= float(low), (parameter, spec["MinValue"], low)
    if "MaxValue" in spec:
        assert high is not None and float(spec["MaxValue"]) <= float(high), (parameter, spec["MaxValue"], high)
