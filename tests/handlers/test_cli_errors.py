"""What the ``sentryca`` console script says when it cannot be used, word for word: each cause
on its own (a real CA on loopback, real sockets and files, the CLI as a subprocess), no gRPC
core log line, unknown flags named, one version token per store, a closed pipe."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest

import sentryca_client as client
from adapters.stores import FileBundleStore

from support.cli import SENTRYCA
from support.pki import make_bundle, make_csr, snapshot, write_bundle

SRC = str(Path(__file__).resolve().parents[2] / "src")
ANCHORS_HINT = (
    "--trust-anchors must be the CA's ca.crt: the one in its --issuer-credentials directory, or "
    "from `sentryca bundle show --out DIR`"
)
GRPC_LOG_LINE = re.compile(r"^[IWEF]\d{4} |\.cc:\d+\]", re.M)  # I1201 12:00:00.1 … file.cc:123]


def run(*args: str, env: dict[str, str] | None = None, **kw) -> subprocess.CompletedProcess:
    """``sentryca ARGS`` with this checkout's src/ and no GRPC_* variable of the caller's;
    ``kw``: more of subprocess.run's arguments (output captured unless ``stdout`` is given)."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("GRPC_")}
    environment |= {"PYTHONPATH": SRC} | (env or {})
    kw.setdefault("capture_output", "stdout" not in kw)
    return subprocess.run([SENTRYCA, *args], text=True, timeout=90, env=environment, check=False, **kw)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again: nothing listens there


def request(server: str, anchors: Path | str, out: Path, *extra: str, **kw) -> subprocess.CompletedProcess:
    flags = ("--id", "a", "--namespace", "default", "--server", server, "--trust-anchors", str(anchors))
    return run("request", *flags, "--out", str(out), *extra, **kw)


@pytest.fixture
def ca(running_ca, store_dir):
    """(server, anchors) of a CA on loopback with a file store."""
    return f"127.0.0.1:{running_ca.grpc_port}", store_dir / "ca.crt"


# --- the client says the cause it saw and the flag to change -------------------------------------


def test_nothing_listening_at_server(tmp_path, store_dir):
    write_bundle(store_dir, make_bundle(datetime.now(UTC)))
    port = closed_port()
    r = request(f"127.0.0.1:{port}", store_dir / "ca.crt", tmp_path / "o")
    assert (r.returncode, r.stdout) == (1, "")
    assert r.stderr == (
        f"error: nothing is listening at --server 127.0.0.1:{port} (connection refused): is the CA "
        "running, and is this its gRPC port (`sentryca serve` prints it)?\n"
    )
    assert not (tmp_path / "o").exists()  # a failed call leaves no --out directory behind


def test_nothing_listening_names_the_address_tried(tmp_path, store_dir):
    write_bundle(store_dir, make_bundle(datetime.now(UTC)))
    port = closed_port()
    r = request(f"[::1]:{port}", store_dir / "ca.crt", tmp_path / "o")
    assert r.returncode == 1
    assert r.stderr.startswith(f"error: nothing is listening at --server [::1]:{port} (")
    assert "connection refused)" in r.stderr


def test_another_cas_trust_anchors_are_named_without_grpc_log_lines(ca, tmp_path):
    server, _ = ca
    other = tmp_path / "other"
    assert run("bundle", "init", "--issuer-credentials", str(other)).returncode == 0
    r = request(server, other / "ca.crt", tmp_path / "o")
    assert r.returncode == 1
    assert r.stderr == (
        f"error: TLS handshake with --server {server} failed: the CA's certificate does not chain to "
        f"--trust-anchors {other / 'ca.crt'} (unable to get local issuer certificate). {ANCHORS_HINT}\n"
    )
    assert not GRPC_LOG_LINE.search(r.stderr)


def test_grpc_core_logs_only_when_the_user_asks(ca, tmp_path):
    server, _ = ca
    other = tmp_path / "other"
    write_bundle(other, make_bundle(datetime.now(UTC)))
    r = request(server, other / "ca.crt", tmp_path / "o", env={"GRPC_VERBOSITY": "INFO"})
    assert r.returncode == 1 and "ssl_transport_security.cc" in r.stderr  # what the default hides


def test_the_cli_imports_no_grpc_before_it_knows_the_verb():
    code = "import sys; from handlers.cli import build_parser; build_parser(); print('grpc' in sys.modules)"
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": SRC}
    )
    assert r.stdout == "False\n", r.stderr


def test_wrong_server_name(ca, tmp_path):
    server, anchors = ca
    r = request(server, anchors, tmp_path / "o", "--server-name", "ca.other.example")
    assert r.returncode == 1
    assert r.stderr == (
        f"error: TLS handshake with --server {server} failed: the CA's certificate has no SAN for "
        "'ca.other.example' (the name --server-name gives). Use --server-name with a name it holds "
        "(localhost, 127.0.0.1, ::1, its listen address and its --server-names)\n"
    )


def test_server_name_that_does_not_resolve(tmp_path, store_dir):
    write_bundle(store_dir, make_bundle(datetime.now(UTC)))
    r = request("no-such-ca.invalid:50001", store_dir / "ca.crt", tmp_path / "o")
    assert r.returncode == 1
    assert r.stderr.startswith(
        "error: --server no-such-ca.invalid:50001: the host name no-such-ca.invalid does not resolve ("
    )
    assert r.stderr.endswith("); check --server\n")


def test_a_port_that_is_not_tls(running_ca, store_dir, tmp_path):
    server = f"127.0.0.1:{running_ca.healthz_port}"  # plain HTTP
    r = request(server, store_dir / "ca.crt", tmp_path / "o")
    assert r.returncode == 1
    assert r.stderr == (
        f"error: TLS handshake with --server {server} failed (WRONG_VERSION_NUMBER): is --server the "
        "CA's gRPC port (not its /healthz or /metrics port)?\n"
    )


def test_a_server_that_accepts_but_never_answers(tmp_path, store_dir):
    write_bundle(store_dir, make_bundle(datetime.now(UTC)))
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()  # the kernel completes TCP handshakes; nothing ever reads or writes
        server = f"127.0.0.1:{silent.getsockname()[1]}"
        r = request(server, store_dir / "ca.crt", tmp_path / "o", "--timeout", "1")
    assert r.returncode == 1
    assert r.stderr == (
        f"error: --server {server} accepted the connection but did not answer within 1 s: is it the "
        "CA's gRPC port? (a busy CA: raise --timeout)\n"
    )


def test_a_status_from_the_ca_is_shown_with_its_code(ca, tmp_path):
    server, anchors = ca
    r = run("request", "--id", "bad.id", "--namespace", "default", "--server", server,
            "--trust-anchors", str(anchors), "--out", str(tmp_path / "o"))  # fmt: skip
    assert r.returncode == 1
    assert r.stderr == (
        "error: the CA refused the request: PERMISSION_DENIED: invalid request: app id must not contain '.'\n"
    )


def test_trust_anchors_that_do_not_exist(ca, tmp_path):
    server, _ = ca
    missing = tmp_path / "nowhere" / "ca.crt"
    r = request(server, missing, tmp_path / "o")
    assert r.returncode == 2
    assert r.stderr == f"error: --trust-anchors {missing}: No such file or directory; {ANCHORS_HINT}\n"


def test_trust_anchors_that_are_not_certificates(ca, store_dir, tmp_path):
    server, _ = ca
    r = request(server, store_dir / "issuer.key", tmp_path / "o")
    assert r.returncode == 2
    assert r.stderr == (
        f"error: --trust-anchors {store_dir / 'issuer.key'}: not a PEM file of certificates; {ANCHORS_HINT}\n"
    )


@pytest.mark.parametrize(
    "cause, details, reason",
    [
        (
            client.Cause.REFUSED,
            "failed to connect to all addresses; last error: UNKNOWN: ipv6:%5B::1%5D:50001: "
            "Failed to connect to remote host: Connection refused",
            "Failed to connect to remote host: Connection refused",
        ),
        (
            client.Cause.UNTRUSTED,
            "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:50001: Tls handshake "
            "failed (TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: error:1000007d:SSL routines:OPENSSL_internal:"
            "CERTIFICATE_VERIFY_FAILED: certificate has expired: OK",
            "certificate has expired",
        ),
    ],
)
def test_diagnose_reads_grpc_cores_words(cause, details, reason):
    class Failed(grpc.RpcError):
        def code(self):
            return grpc.StatusCode.UNAVAILABLE

        def details(self):
            return details

    d = client.diagnose(Failed(), "localhost:50001")
    assert (d.cause, d.reason) == (cause, reason)
    assert d.address in ("[::1]:50001", "127.0.0.1:50001")


def test_diagnose_tells_a_status_of_the_ca_from_a_transport_failure(running_ca, channel_to):
    with pytest.raises(grpc.RpcError) as e:
        client.sign(channel_to(running_ca), make_csr(), "bad.id", "default", timeout=20)
    d = client.diagnose(e.value, f"localhost:{running_ca.grpc_port}")
    assert (d.cause, d.code) == (client.Cause.ANSWERED, grpc.StatusCode.PERMISSION_DENIED)


# --- request --out never replaces a store's files ----------------------------------------------


def test_request_refuses_to_write_into_a_trust_bundle_store(ca, store_dir, tmp_path):
    server, anchors = ca
    before = snapshot(store_dir)
    link = os.readlink(store_dir / "ca.crt")
    r = request(server, anchors, store_dir)
    assert r.returncode == 2
    assert r.stderr == (
        f"error: --out {store_dir} is a trust-bundle store (it holds issuer.crt): tls.crt and ca.crt "
        "written there would replace the CA's own files; nothing was written, choose another --out\n"
    )
    assert snapshot(store_dir) == before and os.readlink(store_dir / "ca.crt") == link


def test_request_refuses_the_configured_issuer_credentials_directory(ca, tmp_path):
    server, anchors = ca
    creds = tmp_path / "creds"  # not created yet: still the store a `serve` here would use
    r = request(server, anchors, creds, env={"SENTRY_ISSUER_CREDENTIALS": str(creds)})
    assert r.returncode == 2
    assert r.stderr.startswith(
        f"error: --out {creds} is the CA's trust-bundle store (--issuer-credentials): "
    )
    assert not creds.exists()
    r = request(server, anchors, Path(".sentry/credentials"), cwd=tmp_path)  # the default store
    assert r.returncode == 2 and "is the CA's trust-bundle store (--issuer-credentials)" in r.stderr


# --- unknown flags --------------------------------------------------------------------------------


def test_an_unknown_flag_is_named_with_the_nearest_known_one(tmp_path):
    r = run("request", "--app-id", "x")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.startswith("usage: sentryca request [-h] --id ID")
    assert r.stderr.endswith(
        "\nsentryca request: error: unrecognized argument --app-id (did you mean --id?)\n"
    )
    assert "required" not in r.stderr
    r = run("bundle", "init", f"--issuer-credentials={tmp_path}", "--trust-domian", "example.org")
    assert r.returncode == 2 and r.stderr.endswith(
        "sentryca bundle init: error: unrecognized argument --trust-domian (did you mean --trust-domain?)\n"
    )
    assert not any(tmp_path.iterdir())
    r = run("inspect", "--zzz")
    assert r.returncode == 2 and r.stderr.endswith("sentryca inspect: error: unrecognized argument --zzz\n")


# --- serve and inspect on a damaged or busy setup -------------------------------------------------


def test_serve_on_a_port_in_use(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = run("serve", "--issuer-credentials", str(tmp_path / "creds"), "--port", str(port),
                "--healthz-port", "0", "--metrics-port", "0")  # fmt: skip
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert (
        f"CRITICAL sentryca: cannot start the CA: cannot listen on 127.0.0.1:{port}: Address already in use\n"
        in (r.stderr)
    )


def test_a_bundle_with_a_file_deleted_at_inspect_and_serve(tmp_path):
    creds = tmp_path / "creds"
    write_bundle(creds, make_bundle(datetime.now(UTC)))
    (creds / "issuer.crt").unlink()
    before = snapshot(creds)
    r = run("inspect", "--issuer-credentials", str(creds))
    assert (r.returncode, r.stdout, r.stderr) == (1, "", f"error: {creds / 'issuer.crt'}: is missing\n")
    r = run(
        "serve",
        "--issuer-credentials",
        str(creds),
        "--port",
        "0",
        "--healthz-port",
        "0",
        "--metrics-port",
        "0",
    )
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert (
        f"cannot start the CA: refusing to start: the trust bundle in file://{creds} is unusable: "
        f"incomplete trust bundle: missing {creds / 'issuer.crt'} (present: {creds / 'ca.crt'}, "
        f"{creds / 'issuer.key'}, {creds / 'root.key'}). Nothing was changed."
    ) in r.stderr
    assert snapshot(creds) == before


# --- version tokens -------------------------------------------------------------------------------


def test_one_store_shows_one_version_token_everywhere(tmp_path):
    creds = tmp_path / "creds"
    assert run("bundle", "init", "--issuer-credentials", str(creds)).returncode == 0
    shown = re.search(r"\(version (\w+)\)", run("inspect", "--issuer-credentials", str(creds)).stdout)[1]
    refused = run("bundle", "init", "--issuer-credentials", str(creds))
    assert refused.returncode == 1 and f"(version {shown});" in refused.stderr
    export = tmp_path / "export"
    assert run("bundle", "export", "--issuer-credentials", str(creds), "--out", str(export)).returncode == 0
    imported = run("bundle", "import", "--issuer-credentials", str(creds), "--from", str(export))
    assert imported.returncode == 0 and f"(replacing version {shown})" in imported.stdout
    whole = FileBundleStore(creds).load()
    assert len(shown) == 12 and whole.version.startswith(shown)


def test_short_version_is_a_prefix_of_every_stores_token():
    from handlers.cli.common import short_version

    assert short_version('"9b2cf535f27731c974343645a3985328"') == "9b2cf535f277"  # an S3 ETag
    assert short_version("a1b2c3d4-e5f6-7890-abcd-ef0123456789") == "a1b2c3d4-e5f"  # Secrets Manager
    assert short_version("48213") == "48213"  # a Kubernetes resourceVersion


# --- a closed pipe -----------------------------------------------------------------------------


def test_inspect_into_head_exits_quietly(tmp_path):
    creds = tmp_path / "creds"
    write_bundle(creds, make_bundle(datetime.now(UTC)))
    pipeline = f"set -o pipefail; '{SENTRYCA}' inspect --issuer-credentials '{creds}' | head -1"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRPC_")} | {"PYTHONPATH": SRC}
    for unbuffered in ("1", ""):  # unbuffered: the pipe breaks in the middle of the verb
        r = subprocess.run(["bash", "-c", pipeline], capture_output=True, text=True, timeout=60,
                           env=env | {"PYTHONUNBUFFERED": unbuffered})  # fmt: skip
        assert (r.returncode, r.stderr) == (0, "")
        assert r.stdout.startswith(f"store: file://{creds} (version ")


@pytest.mark.parametrize("args", [("inspect",), ("--version",), ("inspect", "--help")])
@pytest.mark.parametrize("unbuffered", ["1", ""])
def test_a_reader_gone_before_the_first_line_leaves_no_traceback(tmp_path, args, unbuffered):
    creds = tmp_path / "creds"
    write_bundle(creds, make_bundle(datetime.now(UTC)))
    read_end, write_end = os.pipe()
    os.close(read_end)  # every write to stdout fails with EPIPE
    try:
        store = ("--issuer-credentials", str(creds)) if args[0] == "inspect" else ()
        r = run(*args, *store, stdout=write_end, stderr=subprocess.PIPE, env={"PYTHONUNBUFFERED": unbuffered})
    finally:
        os.close(write_end)
    assert (r.returncode, r.stderr) == (0, "")
