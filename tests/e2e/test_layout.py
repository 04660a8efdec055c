"""The shape of the layout (design §10), checked on the real tree: no source file over 450 lines,
a core that reads no I/O, environment or clock, and the import contracts of pyproject.toml
(``lint-imports``). Each checker is also run on a small tree with a deliberate violation, so a
check that silently passes would fail here. No servers; a few `lint-imports` subprocesses.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
import tokenize
import tomllib
from pathlib import Path

import pytest

from support import REPO_ROOT

SRC = REPO_ROOT / "src"
GENERATED = "sentryca_proto"  # generated gRPC/protobuf code: not ours to shape
MAX_LINES = 450

# What the core must not do (design §10): talk to AWS, Kubernetes, the network or the disk, read
# the environment or a clock. Matched against code only (comments and strings blanked out).
IMPURE = re.compile(
    r"\bboto3\b|\bbotocore\b|^\s*(from|import) kubernetes|urllib|\bsocket\b|os\.environ|os\.getenv"
    r"|time\.time\(|time\.monotonic|datetime\.now|\bopen\(|Path\("
)


# --- the checkers -------------------------------------------------------------------------------


def long_files(src: Path, limit: int = MAX_LINES) -> list[tuple[str, int]]:
    """(path relative to ``src``, line count) of every .py file under ``src`` longer than
    ``limit`` lines, the generated package aside."""
    found = []
    for path in sorted(src.rglob("*.py")):
        rel = path.relative_to(src)
        if rel.parts[0] == GENERATED:
            continue
        count = len(path.read_text(encoding="utf-8").splitlines())
        if count > limit:
            found.append((rel.as_posix(), count))
    return found


def source_lines(source: str) -> list[str]:
    """The lines of ``source`` as the tokenizer counts them (split at newlines only)."""
    return io.StringIO(source).readlines()


def code_lines(source: str) -> list[str]:
    """The lines of ``source`` with every comment and string literal (docstrings included)
    replaced by spaces; lines and columns stay where they were."""
    rows = [list(line) for line in source_lines(source)]
    blank = {tokenize.COMMENT, tokenize.STRING}
    if hasattr(tokenize, "FSTRING_MIDDLE"):  # Python ≥ 3.12 splits f-strings into tokens
        blank.add(tokenize.FSTRING_MIDDLE)
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type not in blank:
            continue
        (start_row, start_col), (end_row, end_col) = token.start, token.end
        for r in range(start_row, end_row + 1):
            row = rows[r - 1]
            first = start_col if r == start_row else 0
            last = end_col if r == end_row else len(row)
            for i in range(first, last):
                if row[i] not in "\r\n":
                    row[i] = " "
    return ["".join(row) for row in rows]


def impure_lines(core: Path) -> list[str]:
    """``file:line: code`` for every line of code under ``core`` that matches IMPURE."""
    found = []
    for path in sorted(core.rglob("*.py")):
        source = path.read_text(encoding="utf-8")
        for n, (code, line) in enumerate(zip(code_lines(source), source_lines(source), strict=True), 1):
            if IMPURE.search(code):
                found.append(f"{path.relative_to(core.parent).as_posix()}:{n}: {line.strip()}")
    return found


def lint_imports(cwd: Path, pythonpath: Path) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` (import-linter, the interpreter running the tests) with the contracts of
    ``cwd/pyproject.toml``, the packages found on ``pythonpath``."""
    env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    command = (
        "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    )
    return subprocess.run(
        [sys.executable, "-c", command, "--no-cache"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def broken_part(output: str) -> str:
    """The 'Broken contracts' section of lint-imports' report (all of it when there is none)."""
    at = output.find("Broken contracts")
    return output[at:] if at >= 0 else output


# --- the real tree ------------------------------------------------------------------------------


def test_no_source_file_is_longer_than_450_lines():
    found = long_files(SRC)
    assert not found, f"files under src/ longer than {MAX_LINES} lines (split them by concern): " + ", ".join(
        f"{path} ({count})" for path, count in found
    )


def test_the_core_reads_no_io_environment_or_clock():
    found = impure_lines(SRC / "ca_core")
    assert not found, (
        "ca_core must take its inputs as values (design §10): these lines talk to something, read the "
        "environment or a clock; move them to an adapter or pass the value in:\n" + "\n".join(found)
    )


def test_the_import_contracts_hold():
    result = lint_imports(REPO_ROOT, SRC)
    assert result.returncode == 0, (
        "lint-imports: an import contract of pyproject.toml is broken\n"
        + broken_part(result.stdout + result.stderr)
    )


# --- each check fails on a violation ------------------------------------------------------------


def test_long_files_reports_a_451_line_file_and_skips_generated_code(tmp_path):
    (tmp_path / "ca_core").mkdir()
    (tmp_path / "ca_core" / "long.py").write_text("x = 1\n" * 451)
    (tmp_path / "ca_core" / "at_limit.py").write_text("x = 1\n" * 450)
    (tmp_path / GENERATED).mkdir()
    (tmp_path / GENERATED / "sentry_pb2.py").write_text("x = 1\n" * 2000)
    assert long_files(tmp_path) == [("ca_core/long.py", 451)]


@pytest.mark.parametrize(
    "code",
    [
        "import boto3",
        "from botocore.config import Config",
        "from kubernetes import client",
        "import kubernetes.client",
        "import urllib.request",
        "import socket",
        "value = os.environ['HOME']",
        "value = os.getenv('HOME')",
        "now = time.time()",
        "started = time.monotonic()",
        "now = datetime.now(UTC)",
        "data = open('bundle.pem').read()",
        "path = Path('bundle.pem')",
    ],
)
def test_impure_lines_reports_io_environment_and_clock_reads(tmp_path, code):
    core = tmp_path / "ca_core"
    core.mkdir()
    (core / "rule.py").write_text(f'"""A rule."""\n\n\ndef rule():\n    {code}\n')
    assert impure_lines(core) == [f"ca_core/rule.py:5: {code}"]


def test_impure_lines_ignores_comments_docstrings_and_strings(tmp_path):
    core = tmp_path / "ca_core"
    core.mkdir()
    (core / "rule.py").write_text(
        '"""Pure: no time.time(), no os.environ, no open(); the adapter passes\n'
        'Path("x") and datetime.now() in."""\n'
        "\n"
        "\n"
        "def rule(now):  # not time.monotonic: `now` is an argument (design §10)\n"
        '    """Never reads os.getenv or a socket."""\n'
        '    return f"{now} (not from boto3 or urllib)", "import kubernetes"\n'
    )
    assert impure_lines(core) == []


def test_impure_lines_reports_code_after_a_multi_line_string(tmp_path):
    core = tmp_path / "ca_core"
    core.mkdir()
    (core / "rule.py").write_text('NOTE = """first\nsecond"""; NOW = time.time()\n')
    assert impure_lines(core) == ['ca_core/rule.py:2: second"""; NOW = time.time()']


def _contract_tree(tmp_path: Path) -> Path:
    """A tree with the six root packages, empty, and the real pyproject.toml (its contracts)."""
    for package in ("ca_core", "adapters", "handlers", "sentryca_client", "tools", "sentryca_proto"):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    shutil.copy(REPO_ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_contracts_hold_on_a_tree_without_imports(tmp_path):
    result = lint_imports(_contract_tree(tmp_path), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    contracts = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    assert f"Contracts: {len(contracts)} kept, 0 broken" in result.stdout, result.stdout


@pytest.mark.parametrize(
    ("importer", "imported"),
    [
        ("ca_core", "adapters"),
        ("ca_core", "handlers"),
        ("ca_core", "sentryca_client"),
        ("ca_core", "tools"),
        ("ca_core", "grpc"),
        ("ca_core", "botocore"),
        ("adapters", "handlers"),
        ("adapters", "sentryca_client"),
        ("sentryca_client", "adapters"),
        ("sentryca_client", "handlers"),
        ("handlers", "tools"),
    ],
)
def test_lint_imports_reports_a_forbidden_import(tmp_path, importer, imported):
    tree = _contract_tree(tmp_path)
    (tree / importer / "__init__.py").write_text(f"import {imported}\n")
    result = lint_imports(tree, tree)
    assert result.returncode != 0, result.stdout + result.stderr
    assert f"{importer} is not allowed to import {imported}" in result.stdout, result.stdout


def test_lint_imports_reports_an_indirect_forbidden_import(tmp_path):
    # The core reaching Kubernetes through an adapter breaks the core's contracts too.
    tree = _contract_tree(tmp_path)
    (tree / "ca_core" / "__init__.py").write_text("from adapters import kube\n")
    (tree / "adapters" / "kube.py").write_text("import kubernetes\n")
    result = lint_imports(tree, tree)
    assert result.returncode != 0, result.stdout + result.stderr
    assert "ca_core is not allowed to import kubernetes" in result.stdout, result.stdout
