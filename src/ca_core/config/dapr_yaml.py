"""The ``--config`` file (design §7): a YAML document in the shape of Dapr's Configuration, of which
``spec.mtls.workloadCertTTL``, ``spec.mtls.allowedClockSkew`` and ``spec.mtls.tokenValidators`` are
read. Pure: the file's text is passed in.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from ..durations import parse_duration
from ..errors import ConfigError
from .aws_iam import AwsIamSettings, read_aws_iam
from .model import DEFAULT_JWKS_MIN_REFRESH, DEFAULT_JWKS_REQUEST_TIMEOUT, JwksSettings

JWKS_OPTION_KEYS = ("source", "caCertificate", "minRefreshInterval", "requestTimeout")


def read_config_file(text: str, path: str) -> dict[str, Any]:
    """Settings from a Dapr Configuration YAML (``spec.mtls.workloadCertTTL``,
    ``allowedClockSkew``, ``tokenValidators``), as Config field → typed value (timedelta,
    JwksSettings); absent keys are left out. Raises ConfigError naming the file and field."""
    import yaml  # here, not at the top: the Lambda functions import this package on a cold start

    try:
        doc = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    spec = doc.get("spec") or {}
    if not isinstance(spec, dict):
        raise ConfigError(f"{path}: spec must be a mapping")
    mtls = spec.get("mtls") or {}
    if not isinstance(mtls, dict):
        raise ConfigError(f"{path}: spec.mtls must be a mapping")
    out: dict[str, Any] = {}
    for key, dest in (("workloadCertTTL", "workload_cert_ttl"), ("allowedClockSkew", "allowed_clock_skew")):
        if mtls.get(key) not in (None, ""):
            try:
                out[dest] = parse_duration(str(mtls[key]))
            except ValueError as e:
                raise ConfigError(f"{path}: spec.mtls.{key}: {e}") from None
    validators = mtls.get("tokenValidators")
    if isinstance(validators, list):  # aws-iam entries are read apart (design §6.5)
        aws_iam = _take_aws_iam(validators, f"{path}: spec.mtls.tokenValidators")
        if aws_iam is not None:
            out["aws_iam"] = aws_iam
        validators = [v for v in validators if not _is_aws_iam(v)]
    if validators not in (None, "", []):
        jwks = _read_token_validators(validators, f"{path}: spec.mtls.tokenValidators")
        if jwks is not None:
            out["jwks"] = jwks
    return out


def _is_aws_iam(item: Any) -> bool:
    return isinstance(item, dict) and isinstance(item.get("name"), str) and _is_aws_iam_name(item["name"])


def _is_aws_iam_name(name: str) -> bool:
    return name.strip().lower().replace("_", "-") == "aws-iam"


def _take_aws_iam(items: list[Any], where: str) -> AwsIamSettings | None:
    """The settings of the one ``aws-iam`` entry of ``items`` (None without one); ConfigError when
    it is listed twice or its options are wrong (``config.aws_iam.read_aws_iam``)."""
    found: AwsIamSettings | None = None
    for i, item in enumerate(items):
        if not _is_aws_iam(item):
            continue
        if found is not None:
            raise ConfigError(f"{where}[{i}]: 'aws-iam' is listed more than once")
        found = read_aws_iam(item.get("options"), f"{where}[{i}].options")
    return found


def _read_token_validators(items: Any, where: str) -> JwksSettings | None:
    """The additional validators of a Configuration file: only ``jwks`` may be configured;
    KUBERNETES and INSECURE follow from ``--mode`` (design §7). Raises ConfigError."""
    if not isinstance(items, list):
        raise ConfigError(f"{where}: expected a list of {{name, options}}")
    jwks: JwksSettings | None = None
    for i, item in enumerate(items):
        at = f"{where}[{i}]"
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise ConfigError(f"{at}: expected a mapping with a 'name'")
        name = item["name"].strip().lower()
        if name in ("kubernetes", "insecure", "selfhosted"):
            raise ConfigError(
                f"{at}: {name!r} cannot be configured here: KUBERNETES and INSECURE follow from "
                "--mode (kubernetes mode enables KUBERNETES, standalone mode without other validators "
                "enables INSECURE); only 'jwks' and 'aws-iam' may be listed"
            )
        if name != "jwks":
            raise ConfigError(
                f"{at}: unknown token validator {item['name']!r}; only 'jwks' and 'aws-iam' may be listed"
            )
        if jwks is not None:
            raise ConfigError(f"{at}: 'jwks' is listed more than once")
        jwks = _jwks_settings(item.get("options"), f"{at}.options")
    return jwks


def _jwks_settings(options: Any, where: str) -> JwksSettings:
    if not isinstance(options, dict):
        raise ConfigError(f"{where}: expected a mapping with at least 'source'")
    unknown = sorted(set(options) - set(JWKS_OPTION_KEYS))
    if unknown:
        raise ConfigError(
            f"{where}: unknown option(s) {', '.join(unknown)}; known: {', '.join(JWKS_OPTION_KEYS)}"
        )
    source = options.get("source")
    if not isinstance(source, str) or not source.strip():
        raise ConfigError(f"{where}.source: required (an https:// URL, a file path or the JWKS JSON)")
    ca = options.get("caCertificate")
    if ca is not None and (not isinstance(ca, str) or not ca.strip()):
        raise ConfigError(f"{where}.caCertificate: expected PEM text or a file path")
    durations: dict[str, timedelta] = {}
    for key, default in (
        ("minRefreshInterval", DEFAULT_JWKS_MIN_REFRESH),
        ("requestTimeout", DEFAULT_JWKS_REQUEST_TIMEOUT),
    ):
        raw = options.get(key)
        if raw in (None, ""):
            durations[key] = default
            continue
        try:
            value = parse_duration(str(raw))
        except ValueError as e:
            raise ConfigError(f"{where}.{key}: {e}") from None
        if value <= timedelta(0):
            raise ConfigError(f"{where}.{key}: must be positive")
        durations[key] = value
    return JwksSettings(source.strip(), ca, durations["minRefreshInterval"], durations["requestTimeout"])
