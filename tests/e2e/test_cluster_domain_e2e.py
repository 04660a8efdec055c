"""The scheduler's DNS SANs end to end (design §3.4): ``sentryca serve --mode kubernetes`` against
the loopback Kubernetes API signs ``dapr-scheduler`` for a control-plane pod, and its certificate's
names (read by OpenSSL) end in the cluster domain: the one ``--kube-cluster-domain`` sets, the one
derived from ``kubernetes.default.svc``'s canonical name (the CA runs in its own mount namespace,
whose ``/etc/hosts`` the test writes), or the trust domain when the lookup fails."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

import sentryca_client as client
from adapters.cluster_domain import ClusterDomainUnknown
from handlers.composition import derive_cluster_domain

from support.ca import ca_config
from support.cli import serve
from support.kube import Cluster
from support.kube_api_server import KubeApiServer
from support.openssl import run_openssl

CLONE_NEWNS, MS_BIND, MS_REC, MS_PRIVATE = 0x00020000, 0x1000, 0x4000, 0x40000
TRUST_DOMAIN = "td.example"


def _own_mounts(binds: dict[str, Path]) -> Callable[[], None]:
    """A ``preexec_fn``: the child gets a private mount namespace with each file of ``binds``
    mounted over its target (``/etc/hosts``, ``/etc/resolv.conf``); this process's are untouched."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)

    def enter() -> None:
        if libc.unshare(CLONE_NEWNS) != 0:
            raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS)")
        if libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None) != 0:
            raise OSError(ctypes.get_errno(), "make / private")
        for target, source in binds.items():
            if libc.mount(str(source).encode(), target.encode(), None, MS_BIND, None) != 0:
                raise OSError(ctypes.get_errno(), f"bind {source} over {target}")

    return enter


def _namespaces_available() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "--mount", "true"], capture_output=True, check=False).returncode == 0


needs_namespaces = pytest.mark.skipif(
    not _namespaces_available(), reason="needs root (a private mount namespace for /etc/hosts)"
)


def scheduler_dns_names(tmp_path: Path, *args: str, hosts: str | None = None) -> tuple[list[str], str]:
    """Serve in kubernetes mode (``args`` added; with ``hosts`` as the CA's /etc/hosts and a name
    server on 127.0.0.1 that answers nothing there), sign ``dapr-scheduler`` for a control-plane
    pod; returns the leaf's DNS names as OpenSSL prints them, and the CA's log."""
    preexec = None
    if hosts is not None:
        (tmp_path / "hosts").write_text(hosts)
        (tmp_path / "resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
        preexec = _own_mounts(
            {"/etc/hosts": tmp_path / "hosts", "/etc/resolv.conf": tmp_path / "resolv.conf"}
        )
    with KubeApiServer(bearer_token="admin") as api:
        cluster = Cluster(api)
        cluster.pod(
            "dapr-system", "scheduler-0", sa="dapr-scheduler", **{"dapr.io/control-plane": "scheduler"}
        )
        ca = serve(
            tmp_path,
            "--mode",
            "kubernetes",
            "--kubeconfig",
            str(api.write_kubeconfig(tmp_path / "kubeconfig")),
            "--trust-domain",
            TRUST_DOMAIN,
            *args,
            env={"NAMESPACE": "dapr-system"},
            preexec_fn=preexec,
        )
        try:
            ca.wait_ready()
            token = cluster.token("dapr-system", "dapr-scheduler", "scheduler-0")
            signed = client.verify_response(ca.sign("dapr-scheduler", "dapr-system", token=token), ca.anchors)
            assert signed.spiffe_id == f"spiffe://{TRUST_DOMAIN}/ns/dapr-system/dapr-scheduler"
        finally:
            log = ca.start_log + ca.stop()
    leaf_pem = signed.leaf.public_bytes(serialization.Encoding.PEM)
    out = run_openssl("x509", "-noout", "-ext", "subjectAltName", input=leaf_pem)
    assert out.returncode == 0, out.stderr
    names = [n.strip().removeprefix("DNS:") for n in out.stdout.decode().split(",") if "DNS:" in n]
    return names, log


def expected(domain: str) -> list[str]:
    return [f"dapr-scheduler-server-{i}.dapr-scheduler-server.dapr-system.svc.{domain}" for i in range(3)]


def test_the_option_sets_the_cluster_domain(tmp_path):
    names, log = scheduler_dns_names(tmp_path, "--kube-cluster-domain", "corp.example")
    assert names == expected("corp.example")
    assert "cluster domain" not in log  # nothing looked up


@needs_namespaces
def test_kubernetes_mode_derives_it_from_the_api_services_canonical_name(tmp_path):
    hosts = "127.0.0.1 localhost\n10.96.0.1 kubernetes.default.svc.k8s.example kubernetes.default.svc\n"
    names, log = scheduler_dns_names(tmp_path, hosts=hosts)
    assert names == expected("k8s.example")
    assert "Kubernetes cluster domain k8s.example (from the canonical name of kubernetes.default.svc)" in log


@needs_namespaces
def test_a_failed_lookup_falls_back_to_the_trust_domain_and_says_so(tmp_path):
    names, log = scheduler_dns_names(tmp_path, hosts="127.0.0.1 localhost\n")
    assert names == expected(TRUST_DOMAIN)
    assert "could not derive the Kubernetes cluster domain (kubernetes.default.svc does not resolve" in log
    assert f"the scheduler's DNS SANs use the trust domain {TRUST_DOMAIN} instead" in log


def test_only_kubernetes_mode_without_the_option_looks_it_up(tmp_path, caplog):
    asked = []

    def lookup() -> str:
        asked.append(True)
        return "k8s.example"

    assert derive_cluster_domain(ca_config(tmp_path, mode="standalone"), lookup) is None
    assert (
        derive_cluster_domain(ca_config(tmp_path, mode="kubernetes", kube_cluster_domain="c.example"), lookup)
        is None
    )
    assert asked == []
    assert derive_cluster_domain(ca_config(tmp_path, mode="kubernetes"), lookup) == "k8s.example"
    assert asked == [True]


def test_a_lookup_that_fails_is_logged_with_the_fallback(tmp_path, caplog):
    def lookup() -> str:
        raise ClusterDomainUnknown("looking up kubernetes.default.svc took longer than 2 s")

    cfg = ca_config(tmp_path, mode="kubernetes", trust_domain="td.example")
    with caplog.at_level(logging.WARNING, logger="handlers.composition"):
        assert derive_cluster_domain(cfg, lookup) is None
    assert caplog.messages == [
        "could not derive the Kubernetes cluster domain (looking up kubernetes.default.svc took longer "
        "than 2 s); the scheduler's DNS SANs use the trust domain td.example instead, as Dapr's Sentry "
        "does (set --kube-cluster-domain to choose)"
    ]
