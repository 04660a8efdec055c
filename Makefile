# The verbs a person types. `make run` and `make test` work on a fresh machine with Python ≥ 3.11.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
PROTO_SRC := proto/sentryca_proto/sentry/v1/sentry.proto
GENERATED := src/sentryca_proto/sentry/v1

.PHONY: run test lint proto proto-check bench clean

$(VENV)/bin/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python >= 3.11 is required (set PYTHON=...)")'
	$(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); echo "python -m venv failed (on Debian: apt-get install python3-venv)"; exit 1; }

$(VENV)/.installed-run: pyproject.toml | $(VENV)/bin/python
	$(PIP) install -e .
	@touch $@

$(VENV)/.installed-test: pyproject.toml | $(VENV)/bin/python
	$(PIP) install -e '.[test]'
	@touch $@ $(VENV)/.installed-run

## run: start the CA with its embedded defaults (file store in ./.sentry/credentials)
run: $(VENV)/.installed-run
	$(VENV)/bin/sentryca serve $(ARGS)

## test: every test and check (what CI runs)
test: $(VENV)/.installed-test proto-check lint
	$(PY) -m pytest $(PYTEST_ARGS)

## lint: static checks (style, and security with bandit)
lint: $(VENV)/.installed-test
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench
	$(VENV)/bin/bandit -q -c pyproject.toml -r src

## proto: regenerate the gRPC code from proto/ (commit the result)
proto: $(VENV)/.installed-test
	$(PY) -m grpc_tools.protoc -Iproto --python_out=src --grpc_python_out=src --pyi_out=src $(PROTO_SRC)

## proto-check: fail when the committed generated code differs from a fresh generation
proto-check: $(VENV)/.installed-test
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	$(PY) -m grpc_tools.protoc -Iproto --python_out=$$tmp --grpc_python_out=$$tmp --pyi_out=$$tmp $(PROTO_SRC) && \
	for f in sentry_pb2.py sentry_pb2_grpc.py sentry_pb2.pyi; do \
	  diff -u $(GENERATED)/$$f $$tmp/sentryca_proto/sentry/v1/$$f || { echo "generated $$f is stale: run 'make proto' and commit"; exit 1; }; \
	done && echo "proto-check: generated code is up to date"

## bench: throughput and latency figures (not a test)
bench: $(VENV)/.installed-test
	$(PY) bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build src/*.egg-info
