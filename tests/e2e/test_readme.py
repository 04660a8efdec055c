"""README.md, run as written: every ``sh`` block is marked ``<!-- test: NAME [KIND] -->`` and run
here with bash (-euo pipefail) as a newcomer would run it, in a copy of the checkout (Makefile,
pyproject.toml, template.yaml, events/, and a .venv made of links to this test's venv), so nothing
in the repository is touched.

The ``make-run`` block (kind ``background``) is started first, as written, with ``SENTRY_PORT``,
``SENTRY_HEALTHZ_PORT`` and ``SENTRY_METRICS_PORT`` set to 0 (free ports); the README's default
ports (50001, 8080, 9090, and moto's 5000) are replaced in the other blocks by the ports actually
served (and ``localhost`` before them by 127.0.0.1: :data:`LOCALHOST`). Kind ``moto`` runs a
block against the ``moto-server`` block started in the background on a free port; ``skip
(REASON)`` blocks are skipped with their reason. Each block must exit 0; what it promises is
checked after it where that is cheap (:data:`CHECKS`)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from cryptography import x509

from support import REPO_ROOT
from support.cli import BANNER
from support.wait import wait_for_line, wait_until

README = REPO_ROOT / "README.md"
RUNBOOK = REPO_ROOT / "docs" / "runbook.md"
MARK = re.compile(r"<!-- test: ([\w-]+)(?: (background|moto|skip \((.+?)\)))? -->\n```sh\n(.*?)```", re.S)
DEFAULT_PORTS = {"50001": "port", "8080": "healthz", "9090": "metrics", "5000": "moto"}
PORT = re.compile(r"(?<!\d)(50001|8080|9090|5000)(?!\d)")
# `localhost` before one of those ports: the ports are picked free on 127.0.0.1, where the CA and
# moto listen, while localhost may resolve to ::1 first, where another process may hold the same
# port number
LOCALHOST = re.compile(r'localhost(?=(?::|", )(?:50001|8080|9090|5000)(?!\d))')


@dataclass(frozen=True)
class Block:
    name: str
    kind: str  # run | background | moto | skip
    reason: str
    text: str


def blocks() -> list[Block]:
    found = []
    for name, kind, reason, text in MARK.findall(README.read_text()):
        found.append(Block(name, "skip" if kind.startswith("skip") else kind or "run", reason, text))
    return found


def block(name: str) -> Block:
    (b,) = [b for b in blocks() if b.name == name]
    return b


# --- the README's own shape ----------------------------------------------------------------------


def test_the_port_replacement_reaches_every_address_of_the_blocks():
    co = Checkout(Path("."), {}, ports={"port": 1, "healthz": 2, "metrics": 3, "moto": 4})
    text = "\n".join(co.text(b) for b in blocks())
    assert not re.search(r"(?<!\d)(50001|8080|9090|5000)(?!\d)|localhost[:\"]", text)
    assert "--server 127.0.0.1:1 " in text and "http://127.0.0.1:2/healthz" in text
    assert '("127.0.0.1", 1)' in text and "-p 4" in text


def test_every_shell_block_of_the_readme_is_marked():
    text = README.read_text()
    assert text.count("```sh\n") == len(blocks()), "a ```sh block without <!-- test: NAME ... --> before it"
    assert not re.search(r"^```(bash|shell|console|zsh)\b", text, re.M), "shell examples use ```sh"
    names = [b.name for b in blocks()]
    assert len(names) == len(set(names))
    assert {b.name for b in blocks() if b.kind == "background"} == {"make-run", "moto-server"}
    assert all(b.reason for b in blocks() if b.kind == "skip")
    assert set(CHECKS) <= set(names)


def _slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_the_links_to_the_runbook_and_to_own_sections_land():
    text = README.read_text()
    runbook = {_slug(h) for h in re.findall(r"^#+ (.+)$", RUNBOOK.read_text(), re.M)}
    own = {_slug(h) for h in re.findall(r"^#+ (.+)$", text, re.M)}
    links = re.findall(r"\]\((docs/runbook\.md)?#([\w-]+)\)", text)
    assert len(links) >= 15
    for doc, anchor in links:
        assert anchor in (runbook if doc else own), f"{doc}#{anchor}"
    assert (REPO_ROOT / "docs" / "rotation-timeline.svg").exists()
    assert "](docs/rotation-timeline.svg)" in text


def test_the_dapr_section_names_what_the_kubernetes_manifests_deploy():
    """The README's Dapr table says what deploy/kubernetes uses; keep the two in step."""
    section = README.read_text().split("## Use it with Dapr", 1)[1].split("\n## ", 1)[0]
    deploy = yaml.safe_load((REPO_ROOT / "deploy" / "kubernetes" / "deployment.yaml").read_text())
    args = dict(a.split("=", 1) for a in deploy["spec"]["template"]["spec"]["containers"][0]["args"][1:])
    service = yaml.safe_load((REPO_ROOT / "deploy" / "kubernetes" / "service.yaml").read_text())
    store = args["--trust-bundle-store"]  # kubernetes://NAMESPACE/SECRET
    namespace, secret = store.removeprefix("kubernetes://").split("/")
    assert f"`{args['--trust-domain']}`" in section
    assert f"`{namespace}`" in section and namespace == deploy["metadata"]["namespace"]
    assert f"ConfigMap `{secret}`" in section
    name, port = service["metadata"]["name"], service["spec"]["ports"][0]["port"]
    assert f"`{name}.{namespace}.svc.cluster.local:{port}`" in section


# --- running the blocks ---------------------------------------------------------------------------


@dataclass
class Checkout:
    """The copy of the checkout the blocks run in, and what runs there in the background."""

    root: Path
    env: dict[str, str]
    ports: dict[str, int] = field(default_factory=dict)
    procs: list[subprocess.Popen] = field(default_factory=list)
    logs: dict[str, list[str]] = field(default_factory=dict)  # what each background block printed

    def text(self, b: Block) -> str:
        """The block with the README's default ports replaced by the ones served here."""
        text = LOCALHOST.sub("127.0.0.1", b.text)
        return PORT.sub(lambda m: str(self.ports[DEFAULT_PORTS[m.group(1)]]), text)

    def start(self, b: Block, env: dict[str, str]) -> subprocess.Popen:
        proc = subprocess.Popen(
            ["bash", "-euo", "pipefail", "-c", self.text(b)],
            cwd=self.root,
            env=self.env | env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # so that the signal reaches what make started
        )
        self.procs.append(proc)
        return proc

    def drain(self, name: str, proc: subprocess.Popen, lines: list[str]) -> None:
        """Keep reading what ``proc`` prints, so that a full pipe never blocks it."""
        self.logs[name] = lines
        assert proc.stderr is not None
        threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True).start()

    def moto(self) -> None:
        """Start the moto-server block on a free port, once."""
        if "moto" in self.ports:
            return
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.ports["moto"] = s.getsockname()[1]
        self.drain("moto-server", self.start(block("moto-server"), {}), [])

        def answers() -> bool:
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", self.ports["moto"])) == 0

        log = self.logs["moto-server"]
        wait_until(answers, lambda: "the moto server answers:\n" + "".join(log), timeout=60)

    def run(self, b: Block) -> subprocess.CompletedProcess:
        r = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", self.text(b)],
            cwd=self.root,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=110,
            check=False,
        )
        assert r.returncode == 0, f"README block {b.name!r} exited {r.returncode}:\n{r.stdout}\n{r.stderr}"
        return r


def _venv_copy(target: Path) -> None:
    """A .venv that is this test's venv (links to its parts) with install markers newer than the
    copied pyproject.toml, so ``make`` finds everything installed and installs nothing."""
    target.mkdir()
    for part in Path(sys.prefix).iterdir():
        if not part.name.startswith("."):
            (target / part.name).symlink_to(part)
    for marker in (".installed-run", ".installed-test"):
        (target / marker).touch()


@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> Iterator[Checkout]:
    root = tmp_path_factory.mktemp("checkout")
    for name in ("Makefile", "pyproject.toml", "template.yaml"):
        shutil.copy(REPO_ROOT / name, root / name)
    shutil.copytree(REPO_ROOT / "events", root / "events")
    _venv_copy(root / ".venv")
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("SENTRY_", "AWS_", "MAKE", "MFLAGS"))}
    keep.pop("KUBERNETES_SERVICE_HOST", None)
    keep.pop("NAMESPACE", None)
    # no block may reach a real AWS account or an instance-metadata endpoint by mistake
    env = keep | {
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }
    co = Checkout(root, env)
    free_ports = {"SENTRY_PORT": "0", "SENTRY_HEALTHZ_PORT": "0", "SENTRY_METRICS_PORT": "0"}
    ca = co.start(block("make-run"), free_ports | {"SENTRY_MODE": "standalone"})
    lines: list[str] = []

    def banner(line: str) -> bool:
        for name, pattern in BANNER.items():
            if m := re.search(pattern, line):
                co.ports[name] = int(m.group(1))
        return "healthz" in co.ports

    try:
        wait_for_line(ca.stderr, banner, "make run says where the CA serves", timeout=60, seen=lines)
        assert set(co.ports) == set(BANNER), "".join(lines)
        co.drain("make-run", ca, lines)
        yield co
    finally:
        for proc in co.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _first_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificates(path.read_bytes())[0]


def _uris(cert: x509.Certificate) -> list[str]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return san.get_values_for_type(x509.UniformResourceIdentifier)


def _check_request(co: Checkout, r: subprocess.CompletedProcess) -> None:
    assert _uris(_first_cert(co.root / "certs" / "tls.crt")) == ["spiffe://public/ns/default/myapp"]
    assert (co.root / "certs" / "tls.key").stat().st_mode & 0o777 == 0o600


def _check_sign(co: Checkout, r: subprocess.CompletedProcess) -> None:
    assert "leaf.pem: OK" in r.stdout
    assert "pkilint: 1 finding(s)" in r.stdout and "pkix.invalid_uri_syntax" in r.stdout
    assert r.stdout.count("spiffe://example.org/ns/prod/orders") >= 3  # sign, openssl's SAN, spiffe


def _check_health(co: Checkout, r: subprocess.CompletedProcess) -> None:
    assert "bundle: complete" in r.stdout
    health = next(line for line in r.stdout.splitlines() if line.startswith("{"))
    assert json.loads(health)["ready"] is True
    # the counter is there (its value depends on which blocks ran before this one)
    assert re.search(r"^dapr_sentry_cert_sign_success_total \d+(\.\d+)?$", r.stdout, re.M), r.stdout


def _check_sentry_id(co: Checkout, r: subprocess.CompletedProcess) -> None:
    assert "URI:spiffe://localhost/ns/default/dapr-sentry" in r.stdout


def _check_bundle_verbs(co: Checkout, r: subprocess.CompletedProcess) -> None:
    old = _first_cert(co.root / "scratch-old" / "ca.crt")
    assert old == _first_cert(co.root / "scratch-backup" / "ca.crt")  # what regenerate kept
    assert _first_cert(co.root / "scratch" / "ca.crt") != old  # a new CA in the scratch store
    assert (co.root / ".sentry" / "credentials" / "ca.crt").exists()  # make run's store untouched


def _check_rotate(co: Checkout, r: subprocess.CompletedProcess) -> None:
    assert len(x509.load_pem_x509_certificates((co.root / ".sentry/credentials/ca.crt").read_bytes())) == 2
    assert "prepared" in r.stdout


def _check_expiry(co: Checkout, r: subprocess.CompletedProcess) -> None:
    assert '"status": "ok"' in r.stdout, r.stdout


def _check_config_change(co: Checkout, r: subprocess.CompletedProcess) -> None:
    assert r.stdout.count('"outcome": "accepted"') == 4, r.stdout


CHECKS: dict[str, Callable[[Checkout, subprocess.CompletedProcess], None]] = {
    "request": _check_request,
    "sign-and-verify": _check_sign,
    "inspect-and-health": _check_health,
    "dapr-sentry-id": _check_sentry_id,
    "bundle-verbs": _check_bundle_verbs,
    "rotate-verbs": _check_rotate,
    "invoke-expiry": _check_expiry,
    "config-change": _check_config_change,
}


@pytest.mark.slow
@pytest.mark.parametrize("name", [b.name for b in blocks()])
def test_the_readme_block_runs_as_written(checkout, name):
    b = block(name)
    if b.kind == "skip":
        pytest.skip(f"README block {name!r}: {b.reason}")
    if b.kind == "background":  # started by the fixture (make-run) or before a moto block
        if name == "moto-server":
            checkout.moto()
        assert all(p.poll() is None for p in checkout.procs), f"{name} stopped"
        return
    if b.kind == "moto":
        checkout.moto()
    r = checkout.run(b)
    if name in CHECKS:
        CHECKS[name](checkout, r)
