#!/usr/bin/env bash
# Local stand-ins for the Dockerfile's base images, for a machine that reaches no image registry
# (CI). Built once per machine: an image that exists already is kept (FORCE=1 rebuilds).
#
#   PYTHON_IMAGE  (sentryca-local/python:3.11)  for python:*-slim: Debian bookworm's minimal root
#                 (debootstrap --variant=minbase) with its python3 (3.11), python3-venv (the build
#                 stage's venv and pip) and the CA certificates; no compiler
#   LAMBDA_IMAGE  (sentryca-local/lambda-python:3.11)  for public.ecr.aws/lambda/python: the same
#                 root, the Lambda runtime interface client (awslambdaric, its wheel unpacked into
#                 /var/runtime) and /var/runtime/bootstrap, which runs it on $_HANDLER; what
#                 `sam local invoke --invoke-image` runs, with the emulator SAM mounts
#
# Needs root (debootstrap), a Docker engine, a Debian mirror and PyPI (pip on this machine).
set -euo pipefail
PYTHON_IMAGE=${PYTHON_IMAGE:-sentryca-local/python:3.11}
LAMBDA_IMAGE=${LAMBDA_IMAGE:-sentryca-local/lambda-python:3.11}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
PIP=${PIP:-python3 -m pip}
export DOCKER_BUILDKIT=0

have() { docker image inspect "$1" >/dev/null 2>&1; }
if [[ -z ${FORCE:-} ]] && have "$PYTHON_IMAGE" && have "$LAMBDA_IMAGE"; then
  echo "base images present: $PYTHON_IMAGE $LAMBDA_IMAGE"
  exit 0
fi
work=$(mktemp -d "${TMPDIR:-/tmp}/sentryca-base.XXXXXX")
trap 'rm -rf "$work"' EXIT

if [[ -n ${FORCE:-} ]] || ! have "$PYTHON_IMAGE"; then
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$work/root" "$MIRROR" >"$work/debootstrap.log" 2>&1 \
    || { tail -20 "$work/debootstrap.log"; exit 1; }
  rm -rf "$work"/root/var/cache/apt/archives/*.deb "$work"/root/var/lib/apt/lists/*
  tar -C "$work/root" -c . | docker import --change 'ENV LANG=C.UTF-8' - "$PYTHON_IMAGE" >/dev/null
  echo "built $PYTHON_IMAGE"
fi

py=$(docker run --rm "$PYTHON_IMAGE" python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
mkdir -p "$work/lambda/runtime"
$PIP install --quiet --disable-pip-version-check --no-compile --target "$work/lambda/runtime" \
  --implementation cp --python-version "$py" --only-binary=:all: \
  --platform "manylinux_2_28_$(uname -m)" --platform "manylinux2014_$(uname -m)" awslambdaric
cat >"$work/lambda/bootstrap" <<'SH'
#!/bin/sh
# The Lambda runtime: the runtime interface client on the function's handler
cd "${LAMBDA_TASK_ROOT:-/var/task}" || exit 1
export PYTHONPATH="${LAMBDA_TASK_ROOT:-/var/task}:/var/runtime"
exec python3 -m awslambdaric "$_HANDLER"
SH
cat >"$work/lambda/Dockerfile" <<DOCKERFILE
FROM $PYTHON_IMAGE
COPY runtime /var/runtime
COPY bootstrap /var/runtime/bootstrap
RUN chmod 0755 /var/runtime/bootstrap && mkdir -p /var/task
ENV LAMBDA_TASK_ROOT=/var/task LAMBDA_RUNTIME_DIR=/var/runtime
WORKDIR /var/task
ENTRYPOINT ["/var/runtime/bootstrap"]
DOCKERFILE
docker build --quiet -t "$LAMBDA_IMAGE" "$work/lambda" >/dev/null
echo "built $LAMBDA_IMAGE"
