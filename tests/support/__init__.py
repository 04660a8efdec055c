"""What the tests share besides fixtures: helpers and loopback servers, imported as ``support``
(pyproject.toml puts tests/ on pytest's pythonpath). The test folders beside it mirror src/
(design §10); a test never imports another test module."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]  # the checkout: src/, events/, template.yaml, docs/
CORPUS = REPO_ROOT / "tests" / "corpus"  # written by support/make_corpus.py, read by e2e/test_fuzz.py
