"""What the S3 and Secrets Manager stores share: the AWS SDK client and the mapping of SDK errors
to the store errors of the port (``base.BundleStore``). The SDK is imported here only, lazily.

Retries of throttling and transient faults are the SDK's (botocore ``retries`` mode
``standard`` by default, or ``AWS_RETRY_MODE`` / ``AWS_MAX_ATTEMPTS`` from the environment,
e.g. ``adaptive``); the endpoint, region and credentials come from the usual AWS configuration
(``AWS_ENDPOINT_URL``, ``AWS_REGION``, profiles, roles).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from ca_core.errors import ConfigError, Unavailable

logger = logging.getLogger(__name__)

DENIED_CODES = frozenset(
    {
        "AccessDenied",
        "AccessDeniedException",
        "AllAccessDisabled",
        "InvalidAccessKeyId",
        "InvalidClientTokenId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "ExpiredTokenException",
        "UnrecognizedClientException",
        "KMS.AccessDeniedException",
        "KMSAccessDeniedException",
        "KMS.DisabledException",
        "KMSDisabledException",
        "DecryptionFailure",
    }
)
MISCONFIGURED_CODES = frozenset(
    {"NoSuchBucket", "InvalidBucketName", "PermanentRedirect", "KMS.NotFoundException"}
)


def client(
    service: str,
    region: str | None = None,
    *,
    connect_timeout: float = 5,
    read_timeout: float = 15,
    max_attempts: int | None = None,
) -> Any:
    """An AWS SDK client for ``service`` with SDK-level retries (standard mode unless
    ``AWS_RETRY_MODE`` says otherwise) and bounded timeouts (seconds). ``max_attempts``: the
    requests one call may send in all, the first included (1: no SDK retry, the caller retries
    itself); None: ``AWS_MAX_ATTEMPTS`` or the SDK's default. Raises ConfigError when the SDK is
    missing or no region is configured.

    The client comes from a botocore session, the core of boto3 (the same credential chain,
    configuration, retries and models): boto3's own Session would add only resource and
    transfer helpers this project does not use, and importing it costs the Lambda functions
    ~15 ms more on a cold start."""
    try:
        import botocore.session
        from botocore.config import Config
        from botocore.exceptions import NoRegionError, UnknownServiceError
    except ImportError:  # pragma: no cover - boto3 (and so botocore) is a dependency
        raise ConfigError(f"the {service} store needs boto3 (pip install boto3)") from None
    retries: dict[str, Any] = {"mode": os.environ.get("AWS_RETRY_MODE") or "standard"}
    if max_attempts is not None:
        retries["total_max_attempts"] = max_attempts
    # else botocore reads AWS_MAX_ATTEMPTS (and max_attempts in the shared config) itself, as the
    # total it means; passed here as retries["max_attempts"] it would count retries, one more try
    # arg-type: the stubs type `mode` as the three names botocore knows; AWS_RETRY_MODE is passed
    # on as written and botocore itself refuses another.
    config = Config(
        retries=retries,  # type: ignore[arg-type]
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        user_agent_extra="sentryca",
    )
    session = botocore.session.get_session()
    _use_slim_data(session)
    try:
        # botocore reads AWS_DEFAULT_REGION; Lambda and most tools also set AWS_REGION.
        region = region or os.environ.get("AWS_REGION") or None
        return session.create_client(service, region_name=region, config=config)
    except NoRegionError:
        raise ConfigError(
            f"the {service} store needs an AWS region: set AWS_REGION (or AWS_DEFAULT_REGION)"
        ) from None
    except UnknownServiceError:
        raise ConfigError(
            f"botocore has no model for {service!r}"
            + (
                " in SENTRY_BOTOCORE_DATA (rebuild it with python -m tools.slim_botocore)"
                if os.environ.get("SENTRY_BOTOCORE_DATA")
                else ""
            )
        ) from None


def _use_slim_data(session: Any) -> None:
    """With ``SENTRY_BOTOCORE_DATA`` set to a directory built by ``python -m
    tools.slim_botocore`` (the Lambda functions' build does it), ``session`` loads its models
    only from there: the same models without their prose, parsed in a third of the time on the
    cold-start path. A missing directory is logged and botocore's own data used instead."""
    data = os.environ.get("SENTRY_BOTOCORE_DATA")
    if not data:
        return
    if not os.path.isfile(os.path.join(data, "endpoints.json")):
        logger.warning("SENTRY_BOTOCORE_DATA=%s holds no botocore data; using botocore's own", data)
        return
    import botocore.loaders

    session.register_component(
        "data_loader", botocore.loaders.Loader(extra_search_paths=[data], include_default_search_paths=False)
    )


def sdk_errors() -> tuple[type[Exception], ...]:
    """The exception classes the SDK raises (for ``except aws.sdk_errors() as e``)."""
    from botocore.exceptions import BotoCoreError, ClientError

    return (BotoCoreError, ClientError)


def error_code(e: Exception) -> str:
    """The AWS error code of a botocore ClientError ('' for other exceptions)."""
    response = getattr(e, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def http_status(e: Exception) -> int:
    response = getattr(e, "response", None) or {}
    return int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


def unavailable(e: Exception, where: str, doing: str) -> Unavailable:
    """Translate an SDK exception into the port's Unavailable with a reason and a clear message
    (credentials/permissions → ``store_denied``; missing bucket → ``store_misconfigured``;
    network, timeouts, throttling, 5xx → ``store_unreachable``)."""
    from botocore import exceptions as bex

    if isinstance(e, bex.NoCredentialsError | bex.PartialCredentialsError | bex.CredentialRetrievalError):
        return Unavailable(f"{where}: cannot {doing}: no usable AWS credentials ({e})", reason="store_denied")
    if isinstance(e, bex.ClientError):
        code, status = error_code(e), http_status(e)
        message = e.response.get("Error", {}).get("Message", "")
        if code in DENIED_CODES or status == 403:
            return Unavailable(
                f"{where}: cannot {doing}: access denied ({code}: {message}); check the credentials "
                "and the IAM/KMS permissions of this CA",
                reason="store_denied",
            )
        if code in MISCONFIGURED_CODES:
            return Unavailable(f"{where}: cannot {doing}: {code}: {message}", reason="store_misconfigured")
        if (
            status >= 500
            or status == 429
            or "Throttl" in code
            or code in ("RequestLimitExceeded", "SlowDown")
        ):
            return Unavailable(
                f"{where}: cannot {doing}: the service answered {code or status} (after the SDK's retries)",
                reason="store_unreachable",
            )
        return Unavailable(f"{where}: cannot {doing}: {code}: {message}", reason="store_misconfigured")
    if isinstance(e, bex.BotoCoreError):
        return Unavailable(f"{where}: cannot {doing}: {e}", reason="store_unreachable")
    return Unavailable(f"{where}: cannot {doing}: {e}", reason="store_unreachable")
