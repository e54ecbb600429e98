"""Writes a SAM template as CloudFormation receives it after the SAM transform (functions, their IAM
roles and policies, the API's stage, event source mappings), offline, for `make checkov`: checkov
reads SAM's own resources but not the IAM policies SAM generates from `Policies`.

    python .ci/sam_transform.py template.yaml transformed.json
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

# The transform builds ARNs for the deploy region; any region will do for a scan.
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")

from samtranslator.translator.transform import transform
from samtranslator.yaml_helper import yaml_parse


class NoManagedPolicies:
    """Managed policies are looked up by name (an AWS call) only for names listed in a function's
    Policies; the template lists none, so the lookup has nothing to return."""

    def load(self) -> dict[str, str]:
        return {}


def main(source: str, target: str) -> None:
    template: dict[str, Any] = yaml_parse(Path(source).read_text())
    for resource in template.get("Resources", {}).values():
        properties = resource.get("Properties") or {}
        for key in ("CodeUri", "ContentUri"):  # local folders, which `sam deploy` uploads to S3
            if isinstance(properties.get(key), str):
                properties[key] = f"s3://placeholder/{properties[key]}"
    Path(target).write_text(json.dumps(transform(template, {}, NoManagedPolicies()), indent=1))


if __name__ == "__main__":
    main(*sys.argv[1:3])
