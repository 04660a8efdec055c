"""Leaf signing with CA keys in KMS (design §5.18), against moto server on loopback: a path check.

Usage: ``python bench/kms_signing.py [LEAVES [CALLS [CONCURRENCY]]]`` (defaults 200, 200, 8).
Prints one JSON object:

- ``local_issuer_under_kms_root``: leaves per second signed by a bundle's issuer when its root
  key is in KMS (the default deployment with ``--root-key``), and the KMS ``Sign`` calls those
  leaves made (0: the hot path never calls KMS, so the rate is today's);
- ``local_issuer_alone``: the same with an all-local bundle, for comparison;
- ``kms_issuer``: leaves per second when a KMS key object is the issuer key (what
  ``--issuer-key kms://...`` does: one ``Sign`` round trip per leaf). Against moto this
  measures the HTTP path and moto's signing, not AWS: there the bound is KMS's ``Sign`` quota
  (300 requests per second for ECC keys, shared per account and region by default, throttled
  beyond) and its latency (milliseconds per call from within the region);
- ``server_kms_issuer``: the whole CA (``CertificateAuthority`` on loopback, standalone mode,
  ``--issuer-key kms://...``) answering CALLS ``SignCertificate`` calls over gRPC/TLS from
  CONCURRENCY client threads: calls per second, median and p99 latency, and the KMS ``Sign``
  calls moto counted. Signing runs in the server's I/O pool (design §8.7), so this is the rate
  the pool and moto allow, again a path check only.

Figures are printed, never asserted.
"""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import UTC, datetime

from cryptography.hazmat.primitives.asymmetric import ec

from ca_core.bundle import generate_bundle
from ca_core.certs import sign_workload
from ca_core.spiffe_id import SpiffeId

CA_ID = SpiffeId("example.org", "default", "dapr-sentry")


def rate(issuer, issuer_key, leaves: int) -> float:
    """Leaves per second signed by ``issuer_key`` (distinct leaf keys made beforehand)."""
    keys = [ec.generate_private_key(ec.SECP256R1()).public_key() for _ in range(leaves)]
    now = datetime.now(UTC)
    start = time.perf_counter()
    for n, key in enumerate(keys):
        sign_workload(issuer, issuer_key, key, f"spiffe://example.org/ns/bench/app-{n}", now)
    return leaves / (time.perf_counter() - start)


def server_rate(issuer_id: str, calls: int, concurrency: int, directory: str) -> dict[str, object]:
    """The whole CA with its issuer key in KMS, driven over gRPC (see the module docstring)."""
    import threading

    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509 import CertificateSigningRequestBuilder, Name

    import sentryca_client as client
    from ca_core.config import load_config
    from handlers.server import CertificateAuthority

    cfg = load_config(
        {
            "issuer_credentials": directory,
            "listen_address": "127.0.0.1",
            "port": "0",
            "healthz_port": "0",
            "metrics_port": "0",
            "mode": "standalone",
            "log_level": "error",
            "rate_limit": "0",
            "issuer_key": f"kms://{issuer_id}",
        },
        {},
    )
    csrs = []
    for _ in range(calls):
        key = ec.generate_private_key(ec.SECP256R1())
        csr = CertificateSigningRequestBuilder().subject_name(Name([])).sign(key, hashes.SHA256())
        csrs.append(csr.public_bytes(serialization.Encoding.PEM))
    ca = CertificateAuthority()
    ca.start(cfg)
    latencies: list[float] = []
    failures = [0]
    lock = threading.Lock()
    try:
        anchors = open(os.path.join(directory, "ca.crt"), "rb").read()
        chan = client.channel(f"localhost:{ca.grpc_port}", anchors)
        client.sign(chan, csrs[0], "warmup", "bench")
        todo = iter(range(calls))

        def worker() -> None:
            for n in todo:
                started = time.perf_counter()
                try:
                    client.sign(chan, csrs[n], f"app-{n}", "bench", timeout=30)
                except Exception:  # noqa: BLE001 - counted, the bench goes on
                    with lock:
                        failures[0] += 1
                    continue
                with lock:
                    latencies.append(time.perf_counter() - started)

        threads = [threading.Thread(target=worker) for _ in range(concurrency)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - start
        chan.close()
    finally:
        ca.stop(grace=0)
    latencies.sort()

    def ms(q: float) -> float:
        return (
            round(1000 * latencies[min(len(latencies) - 1, int(q * len(latencies)))], 1) if latencies else 0.0
        )

    return {
        "calls": calls,
        "concurrency": concurrency,
        "calls_per_second": round(len(latencies) / elapsed, 1),
        "p50_ms": ms(0.5),
        "p99_ms": ms(0.99),
        "failures": failures[0],
    }


def main() -> None:
    leaves = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    grpc_calls = int(sys.argv[2]) if len(sys.argv) > 2 else 200
    concurrency = int(sys.argv[3]) if len(sys.argv) > 3 else 8
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # not a line per KMS request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    os.environ.update(
        AWS_ENDPOINT_URL=f"http://{host}:{port}",
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_REGION="us-east-1",
    )
    from adapters import aws, kms

    try:
        control = aws.client("kms")
        root_id, issuer_id = (
            control.create_key(KeyUsage="SIGN_VERIFY", KeySpec="ECC_NIST_P256")["KeyMetadata"]["KeyId"]
            for _ in range(2)
        )
        root_key = kms.open_key(f"kms://{root_id}")
        calls = {"Sign": 0}

        def count(**_: object) -> None:
            calls["Sign"] += 1

        root_key._client.meta.events.register("before-call.kms.Sign", count)
        now = datetime.now(UTC)
        kms_rooted = generate_bundle("example.org", CA_ID, now, root_key=root_key)
        calls["Sign"] = 0  # the root and issuer of the bundle: two calls, not the hot path
        under_kms_root = rate(kms_rooted.issuer, kms_rooted.issuer_key, leaves)
        hot_path_calls = calls["Sign"]
        local = generate_bundle("example.org", CA_ID, now)
        alone = rate(local.issuer, local.issuer_key, leaves)
        issuer_key = kms.open_key(f"kms://{issuer_id}")
        from ca_core.certs import generate_issuer

        kms_issuer = generate_issuer(local.trust_anchors[0], local.root_key, issuer_key, CA_ID, now)
        via_kms = rate(kms_issuer, issuer_key, max(leaves // 4, 1))
        import tempfile

        server_issuer = control.create_key(KeyUsage="SIGN_VERIFY", KeySpec="ECC_NIST_P256")["KeyMetadata"]
        # the server opens the same reference: this process's handle, so its Sign calls are counted
        kms.open_key(f"kms://{server_issuer['KeyId']}")._client.meta.events.register(
            "before-call.kms.Sign", count
        )
        calls["Sign"] = 0
        with tempfile.TemporaryDirectory() as directory:
            whole = server_rate(server_issuer["KeyId"], grpc_calls, concurrency, directory)
        whole["kms_sign_calls"] = calls["Sign"]
    finally:
        server.stop()
    print(
        json.dumps(
            {
                "leaves": leaves,
                "local_issuer_under_kms_root": {
                    "leaves_per_second": round(under_kms_root),
                    "kms_sign_calls": hot_path_calls,
                },
                "local_issuer_alone": {"leaves_per_second": round(alone)},
                "kms_issuer": {
                    "leaves_per_second": round(via_kms, 1),
                    "note": "moto on loopback: a path check; on AWS the Sign quota (300/s for ECC keys "
                    "per account and region by default) and latency bound it",
                },
                "server_kms_issuer": whole
                | {
                    "note": "the whole CA over gRPC, signing through moto: a path check; AWS's Sign quota "
                    "is the bound"
                },
            }
        )
    )


if __name__ == "__main__":
    main()
