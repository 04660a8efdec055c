# Two images from the same package, built by `make image` (which first puts the inputs below
# into build/image/; no network is needed inside the build):
#   target server  (sentryca:server)  the gRPC CA (ECS task, Kubernetes)
#   target lambda  (sentryca:lambda)  the functions (handler set per function)
# Both run as a non-root user. Checked statically by `make lint-docker` (hadolint, checkov) and
# built and run by tests/e2e/test_images.py.
#
# Inputs made on the host, so that the build needs no registry access and no certificates:
#   build/image/wheels/       the project's wheel and its dependencies' wheels for PYTHON_VERSION
#                             and this machine's architecture (pip download)
#   build/image/lambda-task/  the functions' package, made by src/Makefile exactly as `sam build`
#                             makes it (the core, the handlers, src/requirements.txt, slim botocore)
# The base images are the real ones by default; BASE_IMAGE and LAMBDA_BASE_IMAGE substitute
# others with the same Python (a test uses local ones: deploy/local/base-images.sh).

ARG PYTHON_VERSION=3.12
ARG BASE_IMAGE=python:${PYTHON_VERSION}-slim
ARG LAMBDA_BASE_IMAGE=public.ecr.aws/lambda/python:${PYTHON_VERSION}
# checkov:skip=CKV_DOCKER_7: the FROM lines name build arguments whose defaults above are versioned tags; checkov does not expand them

FROM ${BASE_IMAGE} AS build
LABEL org.sentryca.built-by=make-image
COPY build/image/wheels /wheels
# a venv, so that the same steps work on an image whose system Python is managed by its
# distribution (PEP 668); then its pip goes, which the server does not run
RUN python3 -m venv /opt/sentryca \
    && /opt/sentryca/bin/python -m pip install --no-cache-dir --no-index --find-links /wheels /wheels/sentryca-*.whl \
    && /opt/sentryca/bin/python -m pip uninstall --yes pip setuptools \
    && find /opt/sentryca -name __pycache__ -prune -exec rm -rf {} +

FROM ${BASE_IMAGE} AS server
LABEL org.sentryca.built-by=make-image
COPY --from=build /opt/sentryca /opt/sentryca
# The base's own pip (python:*-slim ships one) is build tooling the CA never runs: it goes too.
RUN if python3 -m pip --version >/dev/null 2>&1; then python3 -m pip uninstall --yes pip; fi \
    && useradd --system --uid 10001 --home-dir /var/lib/sentryca --create-home sentryca
WORKDIR /var/lib/sentryca
USER 10001:10001
ENV PATH=/opt/sentryca/bin:${PATH} \
    SENTRY_LISTEN_ADDRESS=0.0.0.0 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
EXPOSE 50001 8080 9090
# liveness (/livez), not readiness: a CA waiting for its bundle is alive; the port follows SENTRY_HEALTHZ_PORT
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s \
    CMD ["sentryca", "healthcheck", "--live"]
ENTRYPOINT ["sentryca"]
CMD ["serve"]

# The functions import only the core, the AWS store adapters and Powertools (src/requirements.txt):
# no grpc, no kubernetes, which keeps the cold start small. No RUN step: nothing is installed here.
FROM ${LAMBDA_BASE_IMAGE} AS lambda
LABEL org.sentryca.built-by=make-image
COPY build/image/lambda-task ${LAMBDA_TASK_ROOT}/
# botocore's models without prose (tools.slim_botocore): ~60 ms less per cold start
ENV SENTRY_BOTOCORE_DATA=${LAMBDA_TASK_ROOT}/botocore-data
USER 1000:1000
CMD ["handlers.expiry_check.handler"]
