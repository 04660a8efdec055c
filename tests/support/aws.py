"""The AWS side of the tests: moto in server mode (real HTTP on loopback) and the functions'
environment."""

from __future__ import annotations

import json

from support import REPO_ROOT

# every function's environment variables, as `make invoke` sets them (events/env.json)
FUNCTION_ENV = json.loads((REPO_ROOT / "events" / "env.json").read_text())


def emf_lines(out: str) -> list[dict]:
    """The EMF documents among the JSON lines a handler printed."""
    docs = []
    for line in out.splitlines():
        if line.startswith("{") and '"_aws"' in line:
            docs.append(json.loads(line))
    return docs


def emitted(out: str) -> dict[str, list[tuple[str, tuple[str, ...], dict]]]:
    """metric name → [(namespace, dimension names, the document)] for every EMF line."""
    found: dict[str, list] = {}
    for doc in emf_lines(out):
        for d in doc["_aws"]["CloudWatchMetrics"]:
            for m in d["Metrics"]:
                for dims in d["Dimensions"]:
                    found.setdefault(m["Name"], []).append((d["Namespace"], tuple(dims), doc))
    return found


def log_lines(out: str) -> list[dict]:
    return [json.loads(x) for x in out.splitlines() if x.startswith("{") and '"_aws"' not in x]
