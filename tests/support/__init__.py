"""What the tests share besides fixtures, imported as ``support`` (pyproject.toml puts tests/ on
pytest's pythonpath): ``pki`` (keys, CSRs, bundles, a client's verifier), ``ca`` (an in-process
CA's Config), ``cli`` (the ``sentryca`` script, ``sentryca serve`` as a subprocess), ``openssl``,
``aws`` (moto, the functions' environment and EMF output), ``kube`` (a cluster on the fake API),
``wait`` (polling), the loopback servers ``jwks_server`` and ``kube_api_server``, and
``make_corpus`` (writes tests/corpus). The test folders beside it mirror src/ (design §10); a
test imports helpers from here, never from another test module."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]  # the checkout: src/, events/, template.yaml, docs/
CORPUS = REPO_ROOT / "tests" / "corpus"  # written by support/make_corpus.py, read by e2e/test_fuzz.py
