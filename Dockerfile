# Two images from the same package:
#   docker build --target server -t sentryca:server .   the gRPC CA (ECS task, Kubernetes)
#   docker build --target lambda -t sentryca:lambda .   the functions (handler set per function)
# Both run as a non-root user. Checked statically by `make lint-docker` (hadolint).

ARG PYTHON_VERSION=3.12

FROM python:${PYTHON_VERSION}-slim AS build
WORKDIR /build
COPY pyproject.toml README.md ./
COPY src ./src
RUN python -m pip install --no-cache-dir --prefix=/install .

FROM python:${PYTHON_VERSION}-slim AS server
COPY --from=build /install /usr/local
RUN useradd --system --uid 10001 --home-dir /var/lib/sentryca --create-home sentryca
WORKDIR /var/lib/sentryca
USER 10001:10001
ENV SENTRY_LISTEN_ADDRESS=0.0.0.0 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
EXPOSE 50001 8080 9090
# liveness (/livez), not readiness: a CA waiting for its bundle is alive; the port follows SENTRY_HEALTHZ_PORT
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s \
    CMD ["sentryca", "healthcheck", "--live"]
ENTRYPOINT ["sentryca"]
CMD ["serve"]

# The functions import only the core, the AWS store adapters and Powertools (src/requirements.txt):
# no grpc, no kubernetes, which keeps the cold start small.
FROM public.ecr.aws/lambda/python:${PYTHON_VERSION} AS lambda
COPY src/requirements.txt ${LAMBDA_TASK_ROOT}/
RUN python -m pip install --no-cache-dir --requirement "${LAMBDA_TASK_ROOT}/requirements.txt" --target "${LAMBDA_TASK_ROOT}"
COPY src/ca_core ${LAMBDA_TASK_ROOT}/ca_core
COPY src/adapters ${LAMBDA_TASK_ROOT}/adapters
COPY src/handlers ${LAMBDA_TASK_ROOT}/handlers
COPY src/tools /tmp/build-tools/tools
# botocore's models without prose (tools.slim_botocore): ~60 ms less per cold start
RUN PYTHONPATH="${LAMBDA_TASK_ROOT}:/tmp/build-tools" python -m tools.slim_botocore "${LAMBDA_TASK_ROOT}/botocore-data"
ENV SENTRY_BOTOCORE_DATA=${LAMBDA_TASK_ROOT}/botocore-data
USER 1000:1000
CMD ["handlers.expiry_check.handler"]
