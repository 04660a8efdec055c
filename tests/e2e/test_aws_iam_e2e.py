"""``sentryca request --aws-iam`` against a running ``sentryca serve`` whose aws-iam validator sends
proofs to a loopback STS double (design §6.6): the CLI signs from the default credential chain (the
environment here) with the CA's SPIFFE ID read from its TLS certificate; the CA maps the role and
issues; the certificate verifies with OpenSSL; metrics and audit name the rule; the log never holds
the proof, its signature or the secret."""

from __future__ import annotations

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from support.cli import run_sentryca, serve
from support.openssl import run_openssl
from support.sts_double import StsDouble

pytestmark = pytest.mark.slow

ACCOUNT = "111122223333"
KEYS = {"AKIDORDERS": ("secret-orders-key", f"arn:aws:sts::{ACCOUNT}:assumed-role/orders-task/i-0abc")}


def test_request_aws_iam_against_a_running_ca(tmp_path):
    with StsDouble(KEYS) as sts:
        config = tmp_path / "config.yaml"
        config.write_text(
            "spec:\n  mtls:\n    tokenValidators:\n      - name: aws-iam\n        options:\n"
            f"          stsEndpoint: {sts.endpoint}\n          requestTimeout: 5s\n"
            f'          allowedAccounts: ["{ACCOUNT}"]\n          rules:\n'
            "            - {name: orders, role: orders-task, sessionName: 'i-*', namespace: prod, "
            "appId: orders, trustDomain: example.org}\n"
        )
        ca = serve(tmp_path, "--mode", "standalone", "--config", str(config))
        env = {
            "AWS_ACCESS_KEY_ID": "AKIDORDERS",
            "AWS_SECRET_ACCESS_KEY": "secret-orders-key",
            "AWS_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": str(tmp_path / "none"),
            "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
        }
        common = ("--server", f"localhost:{ca.port}", "--trust-anchors", str(ca.creds / "ca.crt"))
        try:
            assert ca.wait_ready()["validators"] == ["aws_iam"]
            out = tmp_path / "certs"
            done = run_sentryca(
                "request",
                "--aws-iam",
                "--id",
                "orders",
                "--namespace",
                "prod",
                "--trust-domain",
                "example.org",
                "--aws-sts-endpoint",
                sts.endpoint,
                *common,
                "--out",
                str(out),
                env=env,
            )
            assert done.returncode == 0, done.stderr
            assert "spiffe://example.org/ns/prod/orders" in done.stdout
            leaf = x509.load_pem_x509_certificates((out / "tls.crt").read_bytes())[0]
            san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
                "spiffe://example.org/ns/prod/orders"
            ]
            (tmp_path / "leaf.pem").write_bytes(leaf.public_bytes(Encoding.PEM))
            verified = run_openssl(
                "verify",
                "-CAfile",
                str(out / "ca.crt"),
                "-untrusted",
                str(out / "tls.crt"),
                str(tmp_path / "leaf.pem"),
            )
            assert verified.returncode == 0, verified.stderr
            from spiffe import X509Svid  # the SPIFFE X509-SVID rules, independently

            svid = X509Svid.parse((out / "tls.crt").read_bytes(), (out / "tls.key").read_bytes())
            assert str(svid.spiffe_id) == "spiffe://example.org/ns/prod/orders"
            assert len(sts.requests) == 1
            # the role maps to orders only: asking for another id is refused, naming both
            refused = run_sentryca(
                "request",
                "--aws-iam",
                "--id",
                "billing",
                "--namespace",
                "prod",
                "--trust-domain",
                "example.org",
                "--aws-sts-endpoint",
                sts.endpoint,
                *common,
                "--out",
                str(tmp_path / "x"),
                env=env,
            )
            assert refused.returncode == 1
            assert (
                "PERMISSION_DENIED" in refused.stderr
                and "expected 'orders', received 'billing'" in refused.stderr
            )
            # a CA without the validator number's validator (INSECURE's token) is not confused
            code, _ = ca.refused("orders", "prod", token_validator=1)
            assert code is grpc.StatusCode.INVALID_ARGUMENT
            # hostile proofs over the wire: refused with a defined status, never INTERNAL
            for token in ("", "%%%", "A" * 20000, "eyJ1cmwiOiAiaHR0cDovLzE2OS4yNTQuMTY5LjI1NC8ifQ", "/w"):
                code, _ = ca.refused("orders", "prod", token=token, token_validator=100)
                assert code is grpc.StatusCode.PERMISSION_DENIED, token[:20]
            assert len(sts.requests) == 2  # none of them reached STS
            metrics = ca.metrics()
            assert 'sentryca_validator_rule_matches_total{rule="orders",validator="aws_iam"} 1.0' in metrics
            assert 'reason="app_id_mismatch"' in metrics
        finally:
            log = ca.stop()
    assert "for spiffe://example.org/ns/prod/orders (aws_iam rule orders)" in log
    assert "secret-orders-key" not in log and "Signature=" not in log and "AKIDORDERS/" not in log
