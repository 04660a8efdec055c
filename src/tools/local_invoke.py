"""``make invoke FN=<LogicalId> EVENT=events/<file>``: run the handler that ``template.yaml`` names
for a function, in this process, with a Lambda-like context and no container runtime.

Environment: ``events/env.json`` (SAM's ``--env-vars`` format: ``{"<LogicalId>": {VAR: value}}``,
plus ``"Parameters"`` for every function) fills variables that are *not already set* in the
calling shell, so ``SENTRY_TRUST_BUNDLE_STORE=file://.sentry/credentials make invoke ...`` points a
function elsewhere. Prints the handler's return value as JSON on stdout (after the handler's own
log and EMF lines); exit status 1 when the handler raised.

Usage: python -m tools.local_invoke [--template template.yaml] [--env-vars events/env.json]
LOGICAL_ID EVENT_FILE
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import yaml


class _CfnLoader(yaml.SafeLoader):
    """A safe YAML loader that reads CloudFormation's short intrinsic tags (``!Ref X`` →
    ``{"Ref": "X"}``, ``!Sub ...`` → ``{"Fn::Sub": ...}``, ``!GetAtt A.B`` → ``{"Fn::GetAtt":
    ["A", "B"]}``)."""


def _intrinsic(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    if suffix == "Ref":
        return {"Ref": value}
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {f"Fn::{suffix}": value}


_CfnLoader.add_multi_constructor("!", _intrinsic)


def load_template(path: str | Path) -> dict[str, Any]:
    """``template.yaml`` as plain data (intrinsics as their JSON long forms)."""
    text = Path(path).read_text()
    # _CfnLoader is a SafeLoader subclass: no arbitrary objects
    return yaml.load(text, Loader=_CfnLoader)  # noqa: S506  # nosec B506


def function_handler(template: dict[str, Any], logical_id: str) -> str:
    """The ``Handler`` of function ``logical_id`` (its own, else ``Globals.Function``).
    Raises KeyError naming the functions there are."""
    resources = template.get("Resources", {})
    res = resources.get(logical_id)
    if not res or res.get("Type") != "AWS::Serverless::Function":
        names = sorted(k for k, v in resources.items() if v.get("Type") == "AWS::Serverless::Function")
        raise KeyError(f"{logical_id!r} is not a function in the template; functions: {', '.join(names)}")
    handler = res.get("Properties", {}).get("Handler") or template.get("Globals", {}).get("Function", {}).get(
        "Handler"
    )
    if not handler:
        raise KeyError(f"{logical_id} has no Handler")
    return str(handler)


def resolve_handler(spec: str) -> Any:
    """Import ``module.path.function`` and return the function."""
    module, _, name = spec.rpartition(".")
    return getattr(importlib.import_module(module), name)


class LambdaContext:
    """The attributes and method of Lambda's context object that handlers (and Powertools) use."""

    def __init__(self, function_name: str, timeout_s: float = 60.0, memory_mb: int = 256) -> None:
        region = os.environ.get("AWS_REGION", "us-east-1")
        self.function_name = function_name
        self.function_version = "$LATEST"
        self.invoked_function_arn = f"arn:aws:lambda:{region}:123456789012:function:{function_name}"
        self.memory_limit_in_mb = memory_mb
        self.aws_request_id = str(uuid.uuid4())
        self.log_group_name = f"/aws/lambda/{function_name}"
        self.log_stream_name = time.strftime("%Y/%m/%d/[$LATEST]") + uuid.uuid4().hex
        self._deadline = time.monotonic() + timeout_s

    def get_remaining_time_in_millis(self) -> int:
        return max(int((self._deadline - time.monotonic()) * 1000), 0)


def apply_env_vars(
    path: str | Path, logical_id: str, environ: dict[str, str] | os._Environ = os.environ
) -> None:
    """Set the variables of ``env.json`` for ``logical_id`` (and ``Parameters``) that are unset."""
    p = Path(path)
    if not p.exists():
        return
    doc = json.loads(p.read_text())
    for section in ("Parameters", logical_id):
        for k, v in (doc.get(section) or {}).items():
            environ.setdefault(k, str(v))


def invoke(logical_id: str, event: dict[str, Any], template_path: str | Path = "template.yaml") -> Any:
    """Run function ``logical_id``'s handler on ``event`` in this process."""
    spec = function_handler(load_template(template_path), logical_id)
    timeout = float(load_template(template_path).get("Globals", {}).get("Function", {}).get("Timeout", 60))
    return resolve_handler(spec)(event, LambdaContext(logical_id, timeout))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make invoke", description=__doc__.split("\n\n")[0])
    parser.add_argument("--template", default="template.yaml")
    parser.add_argument("--env-vars", default="events/env.json")
    parser.add_argument("logical_id")
    parser.add_argument("event")
    args = parser.parse_args(argv)
    try:
        apply_env_vars(args.env_vars, args.logical_id)
    except (OSError, ValueError) as e:
        print(f"make invoke: cannot read the variables file {args.env_vars}: {e}", file=sys.stderr)
        return 2
    try:
        event = json.loads(Path(args.event).read_text())
    except OSError as e:
        print(f"make invoke: cannot read the event {args.event}: {e.strerror}", file=sys.stderr)
        return 2
    except ValueError as e:
        print(f"make invoke: the event {args.event} is not JSON: {e}", file=sys.stderr)
        return 2
    try:
        result = invoke(args.logical_id, event, args.template)
    except KeyError as e:
        print(f"make invoke: {e.args[0]}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - report like Lambda does: the error type and message
        print(json.dumps({"errorType": type(e).__name__, "errorMessage": str(e)}))
        return 1
    print(json.dumps(result, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
