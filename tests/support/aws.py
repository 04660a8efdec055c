"""The AWS side of the tests: moto in server mode (real HTTP on loopback), the functions'
environment (events/env.json) and their EMF output."""

from __future__ import annotations

import json

from support import REPO_ROOT

TEST_BUCKET = "sentryca-test"  # created versioned by the moto_endpoint fixture
BUCKET = "sentryca-bundles-example"  # the bucket the sample events (events/) name
DUMMY_KEYS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}

# every function's environment variables, as `make invoke` sets them (events/env.json)
FUNCTION_ENV = json.loads((REPO_ROOT / "events" / "env.json").read_text())


def start_serialised(server) -> None:
    """Make moto answer one request at a time. Its conditional S3 put (If-None-Match / If-Match)
    checks and then writes without a lock, so two racing creators could both succeed, which real
    S3 never allows; serialising requests gives the fake the atomicity of the real service."""
    import threading

    from moto.moto_server import threaded_moto_server

    lock = threading.Lock()
    real_make_server = threaded_moto_server.make_server

    def make_server(host, port, app, *args, **kwargs):
        def one_at_a_time(environ, start_response):
            with lock:
                return list(app(environ, start_response))

        return real_make_server(host, port, one_at_a_time, *args, **kwargs)

    threaded_moto_server.make_server = make_server
    try:
        server.start()  # builds its WSGI server through make_server, then serves
    finally:
        threaded_moto_server.make_server = real_make_server


def aws_client(service: str, endpoint: str):
    import boto3

    return boto3.client(service, endpoint_url=endpoint, region_name="us-east-1", **DUMMY_KEYS)


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
