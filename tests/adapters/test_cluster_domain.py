"""The cluster-domain lookup (design §3.4): the system resolver's canonical name of
``kubernetes.default.svc``, bounded by a timeout, every failure a ClusterDomainUnknown.

The real lookups run ``getaddrinfo`` in a process with its own mount and network namespaces
(``unshare``), where ``/etc/hosts`` and ``/etc/resolv.conf`` are files of the test and the only
name server is one the test controls (silent, or absent), so nothing reaches a real DNS."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from adapters.cluster_domain import (
    API_SERVICE,
    ClusterDomainUnknown,
    domain_from_canonical_name,
    lookup_cluster_domain,
)

SRC = Path(__file__).resolve().parents[2] / "src"

# --- the name's domain ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, domain",
    [
        ("kubernetes.default.svc.cluster.local", "cluster.local"),
        ("kubernetes.default.svc.cluster.local.", "cluster.local"),  # DNS's trailing dot
        ("Kubernetes.Default.Svc.Corp.Example", "corp.example"),
        ("kubernetes.default.svc.k8s", "k8s"),
    ],
)
def test_the_domain_is_what_follows_the_service_name(name, domain):
    assert domain_from_canonical_name(name) == domain


@pytest.mark.parametrize(
    "name",
    ["kubernetes.default.svc", "kubernetes.default.svc.", "other.example", "kubernetes.default.svc..x", ""],
)
def test_a_canonical_name_without_a_domain_is_refused(name):
    with pytest.raises(ClusterDomainUnknown, match=r"not kubernetes\.default\.svc\.<cluster domain>"):
        domain_from_canonical_name(name)


# --- the lookup's outcomes, with a resolver given ------------------------------------------------


def test_the_resolver_is_asked_for_the_api_service():
    asked = []

    def resolve(host):
        asked.append(host)
        return "kubernetes.default.svc.corp.example."

    assert lookup_cluster_domain(resolve) == "corp.example"
    assert asked == [API_SERVICE]


def test_a_resolver_error_is_reported_with_its_cause():
    def resolve(host):
        raise OSError(-2, "Name or service not known")

    with pytest.raises(ClusterDomainUnknown, match=r"kubernetes.default.svc does not resolve: .*not known"):
        lookup_cluster_domain(resolve)


def test_a_resolver_that_hangs_is_given_up_on_after_the_timeout():
    release = threading.Event()

    def resolve(host):
        release.wait(30)
        return "kubernetes.default.svc.cluster.local"

    try:
        with pytest.raises(ClusterDomainUnknown, match=r"took longer than 0.2 s"):
            lookup_cluster_domain(resolve, timeout=0.2)
    finally:
        release.set()


# --- the real resolver ---------------------------------------------------------------------------


def _namespaces_available() -> bool:
    if shutil.which("unshare") is None or os.geteuid() != 0:
        return False
    probe = subprocess.run(["unshare", "--mount", "--net", "true"], capture_output=True, check=False)
    return probe.returncode == 0


needs_namespaces = pytest.mark.skipif(
    not _namespaces_available(), reason="needs root and unshare (private mount and network namespaces)"
)


def _in_namespace(tmp_path: Path, hosts: str, code: str, *, silent_dns: bool = False) -> dict:
    """Run ``code`` (Python printing one JSON line) where /etc/hosts is ``hosts``, the only
    name server is 127.0.0.1 (a socket that never answers when ``silent_dns``, else nothing),
    and there is no other network."""
    (tmp_path / "hosts").write_text(hosts)
    (tmp_path / "resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:5 attempts:1\n")
    prelude = textwrap.dedent(
        """
        import socket
        if SILENT:
            dns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            dns.bind(("127.0.0.1", 53))  # bound, never read: queries go unanswered
        """
    ).replace("SILENT", str(silent_dns))
    script = (
        "set -e; ip link set lo up; "
        f"mount --bind {tmp_path / 'hosts'} /etc/hosts; "
        f"mount --bind {tmp_path / 'resolv.conf'} /etc/resolv.conf; "
        f'exec "$0" -c "$1"'
    )
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    done = subprocess.run(
        ["unshare", "--mount", "--net", "sh", "-c", script, sys.executable, prelude + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


OUTCOME = """
import json
from adapters.cluster_domain import ClusterDomainUnknown, lookup_cluster_domain
try:
    print(json.dumps({"domain": lookup_cluster_domain(TIMEOUT)}))
except ClusterDomainUnknown as e:
    print(json.dumps({"unknown": str(e)}))
"""


def outcome(timeout: float = 2.0) -> str:
    return OUTCOME.replace("lookup_cluster_domain(TIMEOUT)", f"lookup_cluster_domain(timeout={timeout})")


@needs_namespaces
def test_the_cluster_domain_from_the_hosts_file(tmp_path):
    hosts = "127.0.0.1 localhost\n10.96.0.1 kubernetes.default.svc.corp.example kubernetes.default.svc\n"
    assert _in_namespace(tmp_path, hosts, outcome()) == {"domain": "corp.example"}


@needs_namespaces
def test_the_canonical_name_is_the_resolvers(tmp_path):
    hosts = "10.96.0.1 kubernetes.default.svc.cluster.local kubernetes.default.svc\n"
    code = "import json\nfrom adapters.cluster_domain import canonical_name\n"
    code += "print(json.dumps({'name': canonical_name('kubernetes.default.svc')}))\n"
    assert _in_namespace(tmp_path, hosts, code) == {"name": "kubernetes.default.svc.cluster.local"}


@needs_namespaces
def test_a_name_without_the_cluster_domain_gives_none(tmp_path):
    hosts = "10.96.0.1 kubernetes.default.svc\n"  # the short name is the canonical one
    result = _in_namespace(tmp_path, hosts, outcome())
    assert result == {
        "unknown": "the canonical name of kubernetes.default.svc is 'kubernetes.default.svc', "
        "not kubernetes.default.svc.<cluster domain>"
    }


@needs_namespaces
def test_a_name_that_does_not_resolve_gives_none(tmp_path):
    result = _in_namespace(tmp_path, "127.0.0.1 localhost\n", outcome())
    assert result["unknown"].startswith("kubernetes.default.svc does not resolve: ")


@needs_namespaces
def test_a_name_server_that_never_answers_is_given_up_on(tmp_path):
    # the resolver would wait 5 s for the silent server; the lookup gives up after 0.5 s
    result = _in_namespace(tmp_path, "127.0.0.1 localhost\n", outcome(timeout=0.5), silent_dns=True)
    assert result == {"unknown": "looking up kubernetes.default.svc took longer than 0.5 s"}
