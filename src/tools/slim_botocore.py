"""A slim copy of botocore's data for the Lambda functions: the same models, without their prose.

Creating the first boto3 client in a fresh interpreter costs ~90 ms on the cold-start path, most
of it parsing botocore's JSON: ``endpoints.json`` (1.2 MB, every service of every partition)
and the S3 model (1.7 MB, mostly ``documentation`` strings used only for docstrings). This module
derives from the *installed* botocore (so the data always matches its code) a directory with:

- ``endpoints.json`` keeping every partition and its metadata, but only the services below;
- for each of those services, its newest API version: ``service-2.json`` with every
  ``documentation``/``documentationUrl`` value emptied (the keys stay: botocore reads some of
  them) and, for the large models (S3, SSM, ECS), only the operations the project calls and the
  shapes they reach, each byte-for-byte botocore's (paginators and waiters are then left out);
  the other model files copied unchanged;
- the other top-level data files (``partitions.json``, ``_retry.json``,
  ``sdk-default-configuration.json``) copied unchanged.

Point ``SENTRY_BOTOCORE_DATA`` at the directory and ``adapters.aws.client`` loads only from
it (``botocore.loaders.Loader(extra_search_paths=[dir], include_default_search_paths=False)``).
The SAM build (``src/Makefile``) does this for both functions. ``tests/tools/test_slim_botocore.py``
compares every slim model with botocore's own and checks that every SDK call in ``src/`` is kept;
the Lambda handlers' tests run on the slim data.

Usage: ``python -m tools.slim_botocore OUT_DIR [--services s3,secretsmanager,...]``. Imports
only botocore, so it also runs against packages installed for another platform.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

# What the functions and stores call, plus what botocore's own credential providers create
# clients for (sts for assume-role/web identity, sso, sso-oidc, signin). None: every operation.
OPERATIONS: dict[str, tuple[str, ...] | None] = {
    # HeadBucket: botocore's region redirector asks it when a wrong-region answer names no region
    "s3": ("GetObject", "HeadBucket", "HeadObject", "ListObjectVersions", "PutObject"),
    "ssm": ("GetParameter",),
    "ecs": ("UpdateService",),
    "kms": ("DescribeKey", "GetPublicKey", "Sign"),  # a root or issuer key in KMS (adapters.kms)
    "secretsmanager": None,
    "sts": None,
    "sso": None,
    "sso-oidc": None,
    "signin": None,
}
SERVICES = tuple(OPERATIONS)
PROSE_KEYS = frozenset({"documentation", "documentationUrl"})


def botocore_data_dir() -> Path:
    """The installed botocore's data directory."""
    import botocore

    return Path(botocore.__file__).parent / "data"


def load_json(path: Path) -> Any:
    """A botocore data file (``.json`` or ``.json.gz``)."""
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as f:
        return json.loads(f.read())


def without_prose(node: Any) -> Any:
    """``node`` with every ``documentation``/``documentationUrl`` value replaced by ''."""
    if isinstance(node, dict):
        return {k: ("" if k in PROSE_KEYS else without_prose(v)) for k, v in node.items()}
    if isinstance(node, list):
        return [without_prose(v) for v in node]
    return node


def keep_operations(model: dict[str, Any], operations: Iterable[str]) -> dict[str, Any]:
    """``model`` with only ``operations`` and the shapes they reach (input, output, errors, and
    their members, list members, map keys and values, transitively). Raises KeyError naming an
    operation the model lacks."""
    ops = {name: model["operations"][name] for name in operations}
    todo = [ref["shape"] for op in ops.values() for ref in (op.get("input"), op.get("output")) if ref]
    todo += [err["shape"] for op in ops.values() for err in op.get("errors", [])]
    kept: set[str] = set()
    while todo:
        name = todo.pop()
        if name in kept:
            continue
        kept.add(name)
        shape = model["shapes"][name]
        todo += [m["shape"] for m in shape.get("members", {}).values()]
        todo += [shape[k]["shape"] for k in ("member", "key", "value") if k in shape]
    return {**model, "operations": ops, "shapes": {k: v for k, v in model["shapes"].items() if k in kept}}


def newest_api_version(service_dir: Path) -> str:
    """The newest API version directory of a service (what botocore picks without api_version)."""
    versions = sorted(
        p.name
        for p in service_dir.iterdir()
        if (p / "service-2.json.gz").exists() or (p / "service-2.json").exists()
    )
    if not versions:
        raise FileNotFoundError(f"{service_dir} holds no service model")
    return versions[-1]


def _model_file(directory: Path, stem: str) -> Path:
    for name in (f"{stem}.json", f"{stem}.json.gz"):
        if (directory / name).exists():
            return directory / name
    raise FileNotFoundError(f"{directory} has no {stem}.json[.gz]")


def build(out: Path, services: Iterable[str] = SERVICES, source: Path | None = None) -> list[Path]:
    """Write the slim data for ``services`` into ``out`` (created; its old content replaced);
    services in :data:`OPERATIONS` with a tuple keep only those operations. Returns the files
    written. Raises FileNotFoundError naming an unknown service, KeyError an unknown operation."""
    source = source or botocore_data_dir()
    services = tuple(services)
    for name in services:
        if not (source / name).is_dir():
            raise FileNotFoundError(f"botocore at {source} has no service {name!r}")
    staging = out.with_name(out.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for item in source.iterdir():
        if item.is_file() and item.name != "endpoints.json" and item.name.endswith((".json", ".json.gz")):
            shutil.copy2(item, staging / item.name)
    endpoints = load_json(source / "endpoints.json")
    for partition in endpoints["partitions"]:
        partition["services"] = {k: v for k, v in partition.get("services", {}).items() if k in services}
    _write_json(staging / "endpoints.json", endpoints)
    for name in services:
        version = newest_api_version(source / name)
        src, dst = source / name / version, staging / name / version
        dst.mkdir(parents=True)
        model_file = _model_file(src, "service-2")
        operations = OPERATIONS.get(name)
        skip = ("examples-",) if operations is None else ("examples-", "paginators-", "waiters-")
        for item in src.iterdir():
            if item != model_file and not item.name.startswith(skip):
                shutil.copy2(item, dst / item.name)
        model = without_prose(load_json(model_file))
        if operations is not None:
            model = keep_operations(model, operations)
        _write_json(dst / "service-2.json", model)
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    return sorted(p for p in out.rglob("*") if p.is_file())


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, separators=(",", ":")), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path, help="directory to write (replaced)")
    p.add_argument("--services", default=",".join(SERVICES), help="comma-separated botocore service names")
    args = p.parse_args(argv)
    try:
        files = build(args.out, [s for s in args.services.split(",") if s])
    except (OSError, ValueError, KeyError) as e:
        print(f"slim_botocore: {e}", file=sys.stderr)
        return 1
    size = sum(f.stat().st_size for f in files)
    print(f"wrote {len(files)} files, {size / 1e6:.1f} MB, to {os.fspath(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
