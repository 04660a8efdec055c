"""README.md, run as written: every ``sh`` block is marked ``<!-- test: NAME [KIND] -->`` and run
here with bash (-euo pipefail) as a newcomer would run it, in a copy of the checkout (Makefile,
pyproject.toml, template.yaml, events/, and a .venv made of links to this test's venv), so nothing
in the repository is touched.

The ``make-run`` block (kind ``background``) is started first, as written, with ``SENTRY_PORT``,
``SENTRY_HEALTHZ_PORT`` and ``SENTRY_METRICS_PORT`` set to 0 (free ports); the README's default
ports (50001, 8080, 9090, and moto's 5000) are replaced in the other blocks by the ports actually
served (and ``localhost`` before them by 127.0.0.1: :data:`LOCALHOST`). Kind ``moto`` runs a
block against the ``moto-server`` block started in the background on a free port, with the
``AWS_*`` variables pointing at it where a reader's shell would name their AWS account; what a
deployed stack would hold there is made first (:data:`SETUPS`: the deployment section's stack
outputs, a stand-in stack with the template's output names). Kind ``docker`` needs a Docker engine
(as tests/e2e/test_images.py does) and builds on the local base images; its image tags and the
docker bridge's address are this machine's (:meth:`Checkout.text`), and ``sudo`` is the shell
itself when the test runs as root without one. ``needs=PROGRAM,...`` skips a block whose programs
(the ``aws`` CLI, ``kubectl``) are not installed: the project installs neither. ``skip (REASON)``
blocks are skipped with their reason. Each block must exit 0; what it promises is checked after it
where that is cheap (:data:`CHECKS`)."""

from __future__ import annotations

import contextlib
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

from tools.local_invoke import load_template

from support import REPO_ROOT
from support.cli import BANNER
from support.docker import bridge_gateway, require_engine
from support.wait import wait_for_line, wait_until

README = REPO_ROOT / "README.md"
RUNBOOK = REPO_ROOT / "docs" / "runbook.md"
MARK = re.compile(
    r"<!-- test: ([\w-]+)(?: (background|moto|docker|skip \((.+?)\)))?(?: needs=([\w,-]+))? -->"
    r"\n```sh\n(.*?)```",
    re.S,
)
# the second CA's (request-jwt), picked free too
DEFAULT_PORTS = {
    "50001": "port",
    "8080": "healthz",
    "9090": "metrics",
    "5000": "moto",
    "50002": "port2",
    "8082": "healthz2",
    "9092": "metrics2",
}
PORT = re.compile(r"(?<!\d)(50001|8080|9090|5000|50002|8082|9092)(?!\d)")
# `localhost` before one of those ports: the ports are picked free on 127.0.0.1, where the CA and
# moto listen, while localhost may resolve to ::1 first, where another process may hold the same
# port number
LOCALHOST = re.compile(r'localhost(?=(?::|", )(?:50001|8080|9090|5000|50002|8082|9092)(?!\d))')
# the images `make image` tags (IMAGE ?= sentryca), and what a docker block tags instead
IMAGE_TAG = re.compile(r"(?<![\w/.-])sentryca:(server|lambda)\b")
TEST_IMAGE = "sentryca-readme"
DOCKER_TIMEOUT = 1500  # seconds: make base-images (once per machine), make image, sam build


@dataclass(frozen=True)
class Block:
    name: str
    kind: str  # run | background | moto | docker | skip
    reason: str
    text: str
    needs: tuple[str, ...] = ()  # programs the block runs that the project does not install


def blocks() -> list[Block]:
    found = []
    for name, kind, reason, needs, text in MARK.findall(README.read_text()):
        kind = "skip" if kind.startswith("skip") else kind or "run"
        found.append(Block(name, kind, reason, text, tuple(n for n in needs.split(",") if n)))
    return found


def block(name: str) -> Block:
    (b,) = [b for b in blocks() if b.name == name]
    return b


# --- the README's own shape ----------------------------------------------------------------------


def test_the_port_replacement_reaches_every_address_of_the_blocks():
    ports = {"port": 1, "healthz": 2, "metrics": 3, "moto": 4, "port2": 5, "healthz2": 6, "metrics2": 7}
    co = Checkout(Path("."), {}, ports=ports)
    text = "\n".join(co.text(b) for b in blocks())
    assert not re.search(r"(?<!\d)(50001|8080|9090|5000|50002|8082|9092)(?!\d)|localhost[:\"]", text)
    assert "--server 127.0.0.1:1 " in text and "http://127.0.0.1:2/healthz" in text
    assert '("127.0.0.1", 1)' in text and "-p 4" in text
    assert "--port 5 --healthz-port 6 --metrics-port 7" in text and "--server 127.0.0.1:5 " in text


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


def _section(heading: str) -> str:
    """The README's text under ``heading`` (a ``### `` subsection of "Deployment") up to the next one."""
    return README.read_text().split(f"\n### {heading}\n", 1)[1].split("\n### ", 1)[0]


def _table(text: str) -> dict[str, list[str]]:
    """The rows of the Markdown tables in ``text`` whose first cell is one `code` name: name → cells."""
    rows = {}
    for line in text.splitlines():
        if m := re.match(r"^\| `([\w-]+)` \|(.*)\|$", line):
            rows[m.group(1)] = [cell.strip() for cell in m.group(2).split(" | ")]
    return rows


def test_the_deployment_section_explains_every_template_parameter_with_its_default():
    parameters = load_template(REPO_ROOT / "template.yaml")["Parameters"]
    rows = _table(_section("Deploy to AWS with `sam deploy --guided`"))
    assert rows.keys() == parameters.keys()
    for name, spec in parameters.items():
        default = spec.get("Default")
        stated = rows[name][0]
        if default is None:
            assert stated == "(required)", name
        elif default == "":
            assert stated == "(empty)", name
        else:
            assert stated == f"`{default}`", name


def test_the_deployment_section_names_every_alarm_the_dashboard_and_the_outputs():
    template = load_template(REPO_ROOT / "template.yaml")
    resources = template["Resources"]
    alarms = {k for k, v in resources.items() if v["Type"] == "AWS::CloudWatch::Alarm"}
    section = _section("The dashboard and alarms")
    assert _table(section).keys() == alarms
    body = resources["Dashboard"]["Properties"]["DashboardBody"]["Fn::Sub"]
    for title in re.findall(r'"title": "([^"]+)"', body):
        assert f"**{title}" in section, title  # each widget, by its title
    after = _section("After the deployment")
    for output in template["Outputs"]:
        assert f"`{output}`" in after, output


def test_the_runbook_points_operators_to_the_deployment_section():
    runbook = RUNBOOK.read_text()
    own = {_slug(h) for h in re.findall(r"^#+ (.+)$", README.read_text(), re.M)}
    links = re.findall(r"\]\(\.\./README\.md#([\w-]+)\)", runbook)
    assert "deployment" in links
    assert set(links) <= own


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
        """The block with the README's default ports replaced by the ones served here; in a
        ``docker`` block also the docker bridge's default gateway by this engine's, and the
        images' tags by this test's (:data:`TEST_IMAGE`), so that it never retags the images
        other tests build."""
        text = LOCALHOST.sub("127.0.0.1", b.text)
        if b.kind == "docker":
            text = text.replace("172.17.0.1", bridge_gateway())
            text = IMAGE_TAG.sub(lambda m: f"{TEST_IMAGE}:{m.group(1)}", text)
        return PORT.sub(lambda m: str(self.ports[DEFAULT_PORTS[m.group(1)]]), text)

    def aws_env(self) -> dict[str, str]:
        """The variables that point the AWS SDKs and CLI at the moto server (any credentials)."""
        return {
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{self.ports['moto']}",
            "AWS_REGION": "us-east-1",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
        }

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

    def run(
        self, b: Block, env: dict[str, str] | None = None, timeout: float = 110
    ) -> subprocess.CompletedProcess:
        """Run the block to its end; whatever it left running in the background (a ``&``) is
        stopped afterwards."""
        proc = subprocess.Popen(
            ["bash", "-euo", "pipefail", "-c", self.text(b)],
            cwd=self.root,
            env=self.env | (env or {}),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            raise AssertionError(f"README block {b.name!r} ran over {timeout} s:\n{out}\n{err}") from None
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        r = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
        assert r.returncode == 0, f"README block {b.name!r} exited {r.returncode}:\n{r.stdout}\n{r.stderr}"
        return r


def _venv_copy(
    target: Path, source: Path | None = None, markers=(".installed-run", ".installed-test")
) -> None:
    """A .venv that is this test's venv (links to its parts) with install markers newer than the
    copied pyproject.toml, so ``make`` finds everything installed and installs nothing;
    ``source``: another venv (``.venv-tools``, for ``make sam-invoke``)."""
    target.mkdir()
    for part in (source or Path(sys.prefix)).iterdir():
        if not part.name.startswith("."):
            (target / part.name).symlink_to(part)
    for marker in markers:
        (target / marker).touch()


@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> Iterator[Checkout]:
    root = tmp_path_factory.mktemp("checkout")
    # what make image and make sam-invoke build from, too (the deployment section's docker blocks)
    for name in ("Makefile", "pyproject.toml", "template.yaml", "README.md", "Dockerfile", ".dockerignore"):
        shutil.copy(REPO_ROOT / name, root / name)
    for name in ("events", "deploy", "src"):
        shutil.copytree(
            REPO_ROOT / name, root / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
        )
    _venv_copy(root / ".venv")
    if (REPO_ROOT / ".venv-tools" / "bin" / "sam").exists():  # made by make lint (make test)
        _venv_copy(root / ".venv-tools", (REPO_ROOT / ".venv-tools").resolve(), markers=(".installed",))
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("SENTRY_", "AWS_", "MAKE", "MFLAGS"))}
    keep.pop("KUBERNETES_SERVICE_HOST", None)
    keep.pop("NAMESPACE", None)
    keep["IMAGE"] = TEST_IMAGE  # make image's tags (the docker blocks' text names them so)
    if os.geteuid() == 0 and shutil.which("sudo") is None:  # `sudo make base-images`, as root already
        shim = root / ".test-bin"
        shim.mkdir()
        (shim / "sudo").write_text('#!/bin/sh\nexec "$@"\n')
        (shim / "sudo").chmod(0o755)
        keep["PATH"] = f"{shim}{os.pathsep}{keep.get('PATH', '')}"
    # no block may reach a real AWS account or an instance-metadata endpoint by mistake
    env = keep | {
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }
    co = Checkout(root, env)
    for name in ("port2", "healthz2", "metrics2"):  # the second CA's, as moto's are picked
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            co.ports[name] = s.getsockname()[1]
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
        assert set(co.ports) == set(BANNER) | {"port2", "healthz2", "metrics2"}, "".join(lines)
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


def _check_request_jwt(co: Checkout, r: subprocess.CompletedProcess) -> None:
    import jwt

    out = co.root / "certs-jwt"
    spiffe_id = _uris(_first_cert(out / "tls.crt"))[0]
    keys = jwt.PyJWKSet.from_json((co.root / "jwt-ca" / "jwks.json").read_text())
    for name, aud in (("jwt.token", ["public", "sts.amazonaws.com"]), ("jwt-sts.amazonaws.com.token", None)):
        token = (out / name).read_text().strip()
        key = keys[jwt.get_unverified_header(token)["kid"]]
        claims = jwt.decode(token, key, audience="sts.amazonaws.com", algorithms=["RS256"])
        assert claims["sub"] == spiffe_id and claims["aud"] == (aud or ["sts.amazonaws.com"])
        assert (out / name).stat().st_mode & 0o777 == 0o600


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


def _check_image_offline(co: Checkout, r: subprocess.CompletedProcess) -> None:
    assert re.search(r"^sentryca \S+", r.stdout, re.M), r.stdout  # --version, from the image
    for target in ("server", "lambda"):
        inspect = subprocess.run(
            ["docker", "image", "inspect", "--format", "{{.Config.User}}", f"{TEST_IMAGE}:{target}"],
            capture_output=True,
            text=True,
            check=False,
        )
        assert inspect.returncode == 0 and inspect.stdout.strip() not in ("", "root", "0"), inspect


def _check_sam_invoke_offline(co: Checkout, r: subprocess.CompletedProcess) -> None:
    out = r.stdout + r.stderr
    assert re.search(r'"status":\s*"ok"', out), out[-3000:]
    assert '"SigningCoverageDays"' in out, out[-3000:]  # its EMF document


def _check_ecr(co: Checkout, r: subprocess.CompletedProcess) -> None:
    assert r.stdout.strip().endswith(".dkr.ecr.us-east-1.amazonaws.com/sentryca"), r.stdout


def _check_stack_outputs(co: Checkout, r: subprocess.CompletedProcess) -> None:
    for key in load_template(REPO_ROOT / "template.yaml")["Outputs"]:
        assert key in r.stdout, (key, r.stdout)
    assert STAND_IN_STORE in r.stdout and "bundle: complete" in r.stdout, r.stdout
    anchors = x509.load_pem_x509_certificates((co.root / "trust" / "ca.crt").read_bytes())
    assert anchors and all(c.issuer == c.subject for c in anchors)  # roots only
    assert not list((co.root / "trust").glob("*.key"))  # no key handed out


def _check_kubernetes_overlay(co: Checkout, r: subprocess.CompletedProcess) -> None:
    assert r.stdout.split() == ["image:", "registry.example.com/sentryca@sha256:" + "0" * 64], r.stdout


# --- what a deployed stack would hold in the AWS account (moto) -----------------------------------

STAND_IN_STORE = "s3://sentryca-bundlebucket-standin/sentry/bundle.json"


def _stand_in_stack(co: Checkout) -> None:
    """What `sam deploy` and the first task leave in the account, as far as the block after the
    deployment reads it: a stack named ``sentryca`` with the template's outputs
    (``TrustBundleStore`` naming a versioned bucket in moto, the others stand-in values; moto's
    CloudFormation cannot create the template's own resources), and the bundle the first task
    generates there (``sentryca bundle init``)."""
    import boto3

    aws = co.aws_env()
    kw = {"endpoint_url": aws["AWS_ENDPOINT_URL"], "region_name": aws["AWS_REGION"]}
    bucket = STAND_IN_STORE.removeprefix("s3://").split("/", 1)[0]
    s3 = boto3.client("s3", aws_access_key_id="testing", aws_secret_access_key="testing", **kw)
    s3.create_bucket(Bucket=bucket)
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    init = subprocess.run(
        [
            str(co.root / ".venv" / "bin" / "sentryca"),
            "bundle",
            "init",
            "--trust-bundle-store",
            STAND_IN_STORE,
        ],
        cwd=co.root,
        env=co.env | aws,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert init.returncode == 0, init.stderr
    outputs = {
        key: {"Value": STAND_IN_STORE if key == "TrustBundleStore" else f"stand-in {key}"}
        for key in load_template(REPO_ROOT / "template.yaml")["Outputs"]
    }
    body = {
        "Resources": {"StandIn": {"Type": "AWS::CloudFormation::WaitConditionHandle"}},
        "Outputs": outputs,
    }
    cf = boto3.client("cloudformation", aws_access_key_id="testing", aws_secret_access_key="testing", **kw)
    cf.create_stack(StackName="sentryca", TemplateBody=json.dumps(body))


SETUPS: dict[str, Callable[[Checkout], None]] = {"stack-outputs": _stand_in_stack}


def _unusable(program: str) -> str | None:
    """Why ``program`` cannot run a block here (not installed; an ``aws`` CLI that predates
    ``AWS_ENDPOINT_URL``, 1.29 and 2.13, would reach AWS itself instead of moto), or None."""
    if shutil.which(program) is None:
        return "not installed here"
    if program == "aws":
        version = subprocess.run(["aws", "--version"], capture_output=True, text=True, check=False)
        m = re.search(r"aws-cli/(\d+)\.(\d+)", version.stdout + version.stderr)
        if m is None or (int(m[1]), int(m[2])) < ((1, 29) if m[1] == "1" else (2, 13)):
            return f"this aws CLI ({(version.stdout + version.stderr).strip()}) ignores AWS_ENDPOINT_URL"
    return None


CHECKS: dict[str, Callable[[Checkout, subprocess.CompletedProcess], None]] = {
    "request": _check_request,
    "request-jwt": _check_request_jwt,
    "sign-and-verify": _check_sign,
    "inspect-and-health": _check_health,
    "dapr-sentry-id": _check_sentry_id,
    "bundle-verbs": _check_bundle_verbs,
    "rotate-verbs": _check_rotate,
    "invoke-expiry": _check_expiry,
    "config-change": _check_config_change,
    "image-offline": _check_image_offline,
    "sam-invoke-offline": _check_sam_invoke_offline,
    "ecr-repository": _check_ecr,
    "stack-outputs": _check_stack_outputs,
    "kubernetes-overlay": _check_kubernetes_overlay,
}


@pytest.mark.slow
@pytest.mark.parametrize(
    "name",
    [
        pytest.param(b.name, marks=pytest.mark.timeout(DOCKER_TIMEOUT + 60)) if b.kind == "docker" else b.name
        for b in blocks()
    ],
)
def test_the_readme_block_runs_as_written(checkout, name):
    b = block(name)
    if b.kind == "skip":
        pytest.skip(f"README block {name!r}: {b.reason}")
    for program in b.needs:
        if problem := _unusable(program):
            pytest.skip(f"README block {name!r} runs {program}: {problem}")
    if b.kind == "background":  # started by the fixture (make-run) or before a moto block
        if name == "moto-server":
            checkout.moto()
        assert all(p.poll() is None for p in checkout.procs), f"{name} stopped"
        return
    env, timeout = {}, 110.0
    if b.kind == "moto":
        checkout.moto()
        env = checkout.aws_env()
    if b.kind == "docker":
        require_engine()
        checkout.moto()  # the port number a docker block's own moto server takes, on the bridge
        timeout = DOCKER_TIMEOUT
    if name in SETUPS:
        SETUPS[name](checkout)
    r = checkout.run(b, env, timeout)
    if name in CHECKS:
        CHECKS[name](checkout, r)
