"""Defects found by a newcomer's review, each pinned by a test: unsafe defaults refused, nothing
created or overwritten by a refused operation, clear errors instead of tracebacks."""

import logging
import os
import socket
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives import serialization

import sentryca_client as client
from ca_core.config import load_config
from ca_core.errors import BundleError, ConfigError
from handlers import composition
from handlers.server import CertificateAuthority

from support.ca import ca_config
from support.cli import run_sentryca as run
from support.pki import bundle_with_issuer_window, make_bundle, make_csr, make_key, snapshot, write_bundle

# --- INSECURE is never silently reachable from a network (design §6) ---------------------------


@pytest.mark.parametrize("address", ["0.0.0.0", "::", "10.1.2.3", "ca.example.internal"])
def test_insecure_on_a_network_address_needs_an_explicit_opt_in(address):
    cfg = load_config({"listen_address": address, "mode": "standalone"}, {})
    with pytest.raises(ConfigError, match="--allow-insecure-on-network"):
        composition.build_validators(cfg)


@pytest.mark.parametrize("address", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_insecure_on_loopback_needs_no_opt_in(address):
    cfg = load_config({"listen_address": address, "mode": "standalone"}, {})
    _, default = composition.build_validators(cfg)
    assert default is not None and default.name == "INSECURE"


def test_opting_in_enables_insecure_with_a_warning(caplog):
    cfg = load_config(
        {"listen_address": "0.0.0.0", "allow_insecure_on_network": "true", "mode": "standalone"}, {}
    )
    with caplog.at_level(logging.WARNING):
        _, default = composition.build_validators(cfg)
    assert default.name == "INSECURE"
    assert any("any caller" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


def test_a_refused_configuration_creates_no_ca(store_dir):
    ca = CertificateAuthority()
    with pytest.raises(ConfigError):
        ca.start(ca_config(store_dir, listen_address="0.0.0.0"))
    assert not store_dir.exists()
    assert not ca.running


# --- restart keeps trust continuity and never creates a CA (design §5) -------------------------


def test_restart_onto_an_empty_store_is_refused_and_keeps_serving(
    running_ca, channel_to, store_dir, tmp_path
):
    chan = channel_to(running_ca)
    empty = tmp_path / "empty"
    with pytest.raises(BundleError, match="never creates a new CA"):
        running_ca.restart(ca_config(empty))
    assert not empty.exists()
    assert client.sign(chan, make_csr(), "orders", "prod").workload_certificate


def test_restart_onto_an_unrelated_root_is_refused_unless_forced(running_ca, channel_to, store_dir, tmp_path):
    chan = channel_to(running_ca)
    other = tmp_path / "other"
    write_bundle(other, make_bundle(datetime.now(UTC)))
    before = snapshot(other)
    with pytest.raises(BundleError, match="active root"):
        running_ca.restart(ca_config(other))
    assert snapshot(other) == before
    old_anchors = (store_dir / "ca.crt").read_bytes()
    assert client.verify_response(client.sign(chan, make_csr(), "orders", "prod"), old_anchors)
    running_ca.restart(ca_config(other), force=True)
    assert running_ca.signer.bundle.anchors_pem == (other / "ca.crt").read_bytes()


def test_restart_with_a_bundle_that_keeps_the_root_is_accepted(running_ca, store_dir, tmp_path):
    """A new issuer under the same root (an issuer rotation) passes the continuity check."""
    from ca_core.bundle import TrustBundle
    from ca_core.certs import generate_issuer

    current = running_ca.signer.bundle
    issuer_key = make_key()
    issuer = generate_issuer(
        current.trust_anchors[0],
        current.root_key,
        issuer_key,
        running_ca.signer.policy.ca_identity,
        datetime.now(UTC),
    )
    rotated = tmp_path / "rotated"
    write_bundle(rotated, TrustBundle(current.trust_anchors, (issuer,), issuer_key, current.root_key))
    running_ca.restart(ca_config(rotated))
    assert running_ca.signer.bundle.issuer == issuer


# --- an expired issuer without the root key: said plainly ------------------------------------


def test_expired_issuer_without_root_key_starts_without_grpc_and_says_so(store_dir):
    now = datetime.now(UTC)
    bundle = bundle_with_issuer_window(now - timedelta(days=30), now - timedelta(days=1), now)
    items = bundle.to_items()
    items.pop("root.key")
    from adapters.stores import FileBundleStore

    assert FileBundleStore(store_dir).create(items)
    ca = CertificateAuthority()
    ca.start(ca_config(store_dir))
    try:
        assert ca.grpc_port is None
        ready, details = ca.readiness()
        assert not ready and {"issuer", "server_certificate", "grpc"} <= set(details["not_ready"])
        assert "cannot issue the server certificate" in ca.server_certificate_error
    finally:
        ca.stop(grace=0)


# --- operator input gives messages, not tracebacks -------------------------------------------


@pytest.mark.parametrize(
    "flags, words",
    [
        ({"workload_cert_ttl": "99999999999999h"}, "too large"),
        ({"workload_cert_ttl": "100000000h"}, "10 years"),
        ({"allowed_clock_skew": "48h"}, "24h"),
        ({"expiry_check_interval": "1000h"}, "30 days"),
    ],
)
def test_out_of_range_durations_are_config_errors(flags, words):
    with pytest.raises(ConfigError, match=words):
        load_config(flags, {})


def test_config_file_with_a_non_mapping_spec_is_a_config_error():
    with pytest.raises(ConfigError, match="spec must be a mapping"):
        load_config({"config": "c.yaml"}, {}, {"c.yaml": "spec: [1, 2]"}.__getitem__)


def test_serve_with_a_huge_ttl_exits_2_without_traceback(tmp_path):
    r = run("serve", "--issuer-credentials", str(tmp_path), "--workload-cert-ttl", "99999999999999h")
    assert r.returncode == 2 and "too large" in r.stderr and "Traceback" not in r.stderr


# --- the client checks what it writes --------------------------------------------------------


@pytest.fixture
def served(running_ca, store_dir):
    return running_ca, f"localhost:{running_ca.grpc_port}", str(store_dir / "ca.crt")


def ask(verb: str, server: str, anchors: str, out, *extra: str, app_id: str = "a"):
    """``sentryca VERB`` (request or sign) for APP_ID in namespace default, into ``out``."""
    flags = ("--id", app_id, "--namespace", "default", "--server", server, "--trust-anchors", anchors)
    return run(verb, *extra, *flags, "--out", str(out))


def test_sign_refuses_to_leave_a_mismatched_key_beside_the_certificate(served, tmp_path):
    _, server, anchors = served
    out = tmp_path / "out"
    r = ask("request", server, anchors, out)
    assert r.returncode == 0, r.stderr
    before = snapshot(out)
    csr = tmp_path / "other.csr"
    csr.write_bytes(make_csr())
    r = ask("sign", server, anchors, out, "--csr", str(csr), app_id="b")
    assert r.returncode == 2 and "another key" in r.stderr
    assert snapshot(out) == before


def test_sign_into_a_directory_whose_key_matches_is_fine(served, tmp_path):
    _, server, anchors = served
    key = make_key()
    out = tmp_path / "out"
    out.mkdir()
    (out / "tls.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    csr = tmp_path / "app.csr"
    csr.write_bytes(make_csr(key))
    r = ask("sign", server, anchors, out, "--csr", str(csr), app_id="b")
    assert r.returncode == 0, r.stderr


def test_request_writes_the_key_private_whatever_was_left_in_the_directory(served, tmp_path):
    _, server, anchors = served
    out = tmp_path / "out"
    out.mkdir()
    stale = out / ".tls.key.tmp"
    stale.write_bytes(b"old")
    os.chmod(stale, 0o644)
    r = ask("request", server, anchors, out)
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE((out / "tls.key").stat().st_mode) == 0o600


@pytest.mark.parametrize(
    "setup, words",
    [
        (lambda t: ("--trust-anchors", str(t / "README.md")), "not a PEM file of certificates"),
        (lambda t: ("--out", str(t / "file")), "--out"),
    ],
)
def test_client_input_errors_exit_2(served, tmp_path, setup, words):
    _, server, anchors = served
    (tmp_path / "README.md").write_text("hello")
    (tmp_path / "file").write_text("a file, not a directory")
    args = {"--trust-anchors": anchors, "--out": str(tmp_path / "o")}
    flag, value = setup(tmp_path)
    args[flag] = value
    r = run(
        "request",
        "--id",
        "a",
        "--namespace",
        "default",
        "--server",
        server,
        *[x for kv in args.items() for x in kv],
    )
    assert r.returncode == 2 and words in r.stderr and "Traceback" not in r.stderr


def test_sign_refuses_a_private_key_given_as_csr_before_sending_it(served, tmp_path):
    _, server, anchors = served
    key_file = tmp_path / "app.key"
    key_file.write_bytes(
        make_key().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    r = ask("sign", server, anchors, tmp_path / "o", "--csr", str(key_file))
    assert r.returncode == 2 and "invalid CSR" in r.stderr
    assert not (tmp_path / "o" / "tls.crt").exists()


def test_verify_response_checks_identity_and_key(served):
    _, server, anchors = served
    anchors_pem = Path(anchors).read_bytes()
    key = make_key()
    with client.channel(server, anchors_pem) as chan:
        resp = client.sign(chan, make_csr(key), "orders", "prod", trust_domain="example.org")
    ok = client.verify_response(
        resp,
        anchors_pem,
        namespace="prod",
        app_id="orders",
        trust_domain="example.org",
        public_key=key.public_key(),
    )
    assert ok.spiffe_id == "spiffe://example.org/ns/prod/orders"
    for kw, words in [
        ({"namespace": "dev", "app_id": "orders"}, "not the identity asked for"),
        ({"namespace": "prod", "app_id": "billing"}, "not the identity asked for"),
        ({"trust_domain": "other.org"}, "not the identity asked for"),
        ({"public_key": make_key().public_key()}, "another public key"),
    ]:
        with pytest.raises(client.VerifyError, match=words):
            client.verify_response(resp, anchors_pem, **kw)


def test_unreachable_ca_is_not_called_a_refusal(tmp_path, store_dir):
    write_bundle(store_dir, make_bundle(datetime.now(UTC)))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    r = ask("request", f"127.0.0.1:{port}", str(store_dir / "ca.crt"), tmp_path / "o", "--timeout", "5")
    assert r.returncode == 1 and "nothing is listening at --server" in r.stderr
    assert "the CA refused" not in r.stderr


def test_inspect_says_when_the_bundle_is_unusable(tmp_path):
    creds = tmp_path / "creds"
    write_bundle(creds, make_bundle(datetime.now(UTC)))
    assert run("inspect", "--issuer-credentials", str(creds)).stdout.rstrip().endswith("match)")
    (creds / "issuer.key").unlink()
    r = run("inspect", "--issuer-credentials", str(creds))
    assert r.returncode == 1 and "UNUSABLE" in r.stdout and "issuer.key" in r.stdout


def test_idle_http_connections_are_closed(running_ca):
    with socket.create_connection(("127.0.0.1", running_ca.healthz_port), timeout=30) as s:
        assert s.recv(1) == b""  # the server hangs up on a client that sends nothing


def test_grpc_status_of_a_reserved_identity_names_the_reservation(running_ca, channel_to):
    with pytest.raises(grpc.RpcError) as e:
        client.sign(channel_to(running_ca), make_csr(), "dapr-sentry", "default", trust_domain="public")
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "reserved" in e.value.details()


@pytest.mark.parametrize("server", ["localhost", "127.0.0.1", "::1", "host:port"])
def test_server_without_a_port_is_a_usage_error(server, tmp_path):
    r = ask("request", server, "x", tmp_path / "o")
    assert r.returncode == 2 and "expected HOST:PORT" in r.stderr


def test_abbreviated_flags_are_not_guessed(tmp_path):
    r = run("inspect", "--issuer-cred", str(tmp_path))
    assert r.returncode == 2 and "unrecognized argument --issuer-cred (did you mean" in r.stderr


def test_server_names_are_added_to_the_cas_tls_certificate(store_dir):
    import ipaddress

    from cryptography import x509

    from ca_core.server_certificate import server_sans

    cfg = load_config({"server_names": "CA.internal.example, 10.0.0.7", "listen_address": "127.0.0.1"}, {})
    dns, ips = server_sans(cfg)
    assert dns == ("localhost", "ca.internal.example")
    assert ipaddress.ip_address("10.0.0.7") in ips
    with pytest.raises(ConfigError, match="neither a DNS name"):
        load_config({"server_names": "bad_name!"}, {})
    ca = CertificateAuthority()
    ca.start(ca_config(store_dir, server_names="ca.internal.example"))
    try:
        import ssl

        ctx = ssl.create_default_context(cafile=str(store_dir / "ca.crt"))
        ctx.set_alpn_protocols(["h2"])
        with socket.create_connection(("127.0.0.1", ca.grpc_port), timeout=5) as sock:
            # the name the CA is reached by verifies (SNI/hostname check against the new SAN)
            with ctx.wrap_socket(sock, server_hostname="ca.internal.example") as tls:
                cert = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert "ca.internal.example" in san.get_values_for_type(x509.DNSName)
    finally:
        ca.stop(grace=0)
