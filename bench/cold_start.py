"""Cold start of the expiry function, beside the import time of its unavoidable libraries.

Each sample is a fresh interpreter (``python -X importtime`` is not used: it slows imports):
- ``baseline``: ``import boto3``, ``cryptography.x509`` and Powertools' Logger and Metrics;
- ``+ client``: the baseline plus creating an S3 client (what any function reading S3 pays);
- ``function``: import ``handlers.expiry_check`` and run its first invocation against an S3
  store on a moto server (loopback), i.e. import + boto3 client + one GetObject + parse + EMF,
  as deployed: botocore loading the slim data the SAM build ships (``tools.slim_botocore``,
  ``SENTRY_BOTOCORE_DATA``);
- ``function, full data``: the same with botocore's own data (what the slim data saves).
Samples alternate so drift affects all; the figure is the median. Target: the function at most
1.3 x the baseline. Printed, never asserted.

Usage: python bench/cold_start.py [--runs N] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

BASELINE = """
import time; t = time.perf_counter()
import boto3, cryptography.x509
from aws_lambda_powertools import Logger, Metrics
print(time.perf_counter() - t)
"""

# The baseline plus what any function reading S3 pays on its first call: creating the client
# (botocore loads and parses the S3 service model).
BASELINE_CLIENT = BASELINE.replace(
    "print(", "boto3.session.Session().client('s3', region_name='us-east-1')\nprint("
)

FUNCTION = """
import io, sys, time; t = time.perf_counter()
out, sys.stdout = sys.stdout, io.StringIO()
from handlers import expiry_check
summary = expiry_check.handler({}, None)
sys.stdout = out
assert summary["status"] == "ok", summary
print(time.perf_counter() - t)
"""


def sample(code: str, env: dict[str, str]) -> float:
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if r.returncode:
        raise SystemExit(f"sample failed:\n{r.stderr[-3000:]}")
    return float(r.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=9)
    p.add_argument("--json", metavar="FILE")
    args = p.parse_args(argv)

    import boto3
    from moto.server import ThreadedMotoServer

    sys.path.insert(0, str(ROOT / "src"))
    from adapters.stores.s3 import S3BundleStore
    from ca_core.bundle import generate_bundle
    from tools.slim_botocore import build as build_slim

    slim = None

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "SENTRY_"))},
            "AWS_ENDPOINT_URL": f"http://{host}:{port}",
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
            "SENTRY_TRUST_BUNDLE_STORE": "s3://bench-bundles/sentry/bundle.json",
        }
        s3 = boto3.client(
            "s3",
            endpoint_url=env["AWS_ENDPOINT_URL"],
            region_name="us-east-1",
            aws_access_key_id="bench",
            aws_secret_access_key="bench",
        )
        s3.create_bucket(Bucket="bench-bundles")
        bundle = generate_bundle("localhost", "spiffe://localhost/ns/default/dapr-sentry", datetime.now(UTC))
        S3BundleStore("bench-bundles", "sentry/bundle.json", client=s3).create(bundle.to_items())
        slim = Path(tempfile.mkdtemp(prefix="sentryca-bench-")) / "botocore-data"
        build_slim(slim)
        env_slim = {**env, "SENTRY_BOTOCORE_DATA": str(slim)}
        sample(FUNCTION, env)  # warm the page cache and .pyc files once
        sample(FUNCTION, env_slim)
        base, client, fn, full = [], [], [], []
        for _ in range(args.runs):
            base.append(sample(BASELINE, env))
            client.append(sample(BASELINE_CLIENT, env))
            fn.append(sample(FUNCTION, env_slim))
            full.append(sample(FUNCTION, env))
    finally:
        server.stop()
        if slim is not None:
            shutil.rmtree(slim.parent, ignore_errors=True)
    b, c, f = statistics.median(base), statistics.median(client), statistics.median(fn)
    fd = statistics.median(full)
    print(f"cold start, median of {args.runs} fresh interpreters each (python {sys.version.split()[0]})")
    print(f"  baseline  import boto3 + cryptography.x509 + Powertools      {b * 1000:7.1f} ms")
    print(f"  + client  the same + creating an S3 client                   {c * 1000:7.1f} ms")
    print(f"  function  import handlers.expiry_check + first invocation    {f * 1000:7.1f} ms")
    print(f"            (with botocore's full data instead of the slim copy   {fd * 1000:7.1f} ms)")
    print(f"  ratio     {f / b:.2f} x the baseline (target <= 1.3 x); {f / c:.2f} x baseline + client")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "baseline_s": base,
                    "client_s": client,
                    "function_s": fn,
                    "function_full_data_s": full,
                    "ratio": f / b,
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
