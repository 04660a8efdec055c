"""The ``--config`` file (design §7): a YAML document in the shape of Dapr's Configuration, of which
``spec.mtls.workloadCertTTL``, ``spec.mtls.allowedClockSkew`` and ``spec.mtls.tokenValidators`` are
read. Pure: the file's text is passed in.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

from ..durations import parse_duration
from ..errors import ConfigError
from .aws_iam import AwsIamSettings, read_aws_iam
from .model import DEFAULT_JWKS_MIN_REFRESH, DEFAULT_JWKS_REQUEST_TIMEOUT, JwksSettings, JwtIssuerSettings

JWKS_OPTION_KEYS = ("source", "caCertificate", "minRefreshInterval", "requestTimeout", "issuers")
ISSUER_KEYS = (
    "name",
    "issuer",
    "source",
    "audiences",
    "claims",
    "namespace",
    "appId",
    "trustDomain",
    "caCertificate",
    "minRefreshInterval",
    "requestTimeout",
)


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
    if isinstance(validators, list):  # aws-iam entries are read apart (design §6.6)
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
    issuers = options.get("issuers")
    if issuers is not None and source is not None:
        raise ConfigError(f"{where}: 'source' and 'issuers' exclude each other; give each issuer its source")
    if issuers is None and (not isinstance(source, str) or not source.strip()):
        raise ConfigError(f"{where}.source: required (an https:// URL, a file path or the JWKS JSON)")
    ca, durations = _fetch_settings(options, where, None)
    if issuers is None:
        return JwksSettings(
            str(source).strip(), ca, durations["minRefreshInterval"], durations["requestTimeout"]
        )
    if not isinstance(issuers, list) or not issuers:
        raise ConfigError(f"{where}.issuers: expected a non-empty list of issuer rules")
    rules = tuple(
        _issuer(item, f"{where}.issuers[{i}]", i, (ca, durations)) for i, item in enumerate(issuers)
    )
    names = [r.name for r in rules]
    if len(set(names)) != len(names):
        raise ConfigError(f"{where}.issuers: rule names must differ ({', '.join(names)})")
    issuers_named = [r.issuer for r in rules]
    if len(set(issuers_named)) != len(issuers_named):
        raise ConfigError(f"{where}.issuers: each issuer (iss) has one rule ({', '.join(issuers_named)})")
    return JwksSettings("", ca, durations["minRefreshInterval"], durations["requestTimeout"], rules)


def _fetch_settings(
    options: dict[str, Any], where: str, defaults: tuple[str | None, dict[str, timedelta]] | None
) -> tuple[str | None, dict[str, timedelta]]:
    """``caCertificate`` and the two durations of ``options``, else ``defaults``' (the jwks
    options' own, for an issuer rule), else the built-in defaults. Raises ConfigError."""
    ca = options.get("caCertificate", defaults[0] if defaults else None)
    if ca is not None and (not isinstance(ca, str) or not ca.strip()):
        raise ConfigError(f"{where}.caCertificate: expected PEM text or a file path")
    durations: dict[str, timedelta] = {}
    for key, default in (
        ("minRefreshInterval", DEFAULT_JWKS_MIN_REFRESH),
        ("requestTimeout", DEFAULT_JWKS_REQUEST_TIMEOUT),
    ):
        raw = options.get(key)
        if raw in (None, ""):
            durations[key] = defaults[1][key] if defaults else default
            continue
        try:
            value = parse_duration(str(raw))
        except ValueError as e:
            raise ConfigError(f"{where}.{key}: {e}") from None
        if value <= timedelta(0):
            raise ConfigError(f"{where}.{key}: must be positive")
        durations[key] = value
    return ca, durations


def _strings(value: Any, where: str) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(v, str) and v for v in items):
        raise ConfigError(f"{where}: expected a non-empty string or list of strings")
    return tuple(items)


def _issuer(
    item: Any, where: str, index: int, defaults: tuple[str | None, dict[str, timedelta]]
) -> JwtIssuerSettings:
    """One issuer rule (design §6.5). Raises ConfigError naming the field: unknown keys, an
    issuer that is not an https:// URL, a malformed claim or template, a template that can never
    make a valid namespace or app id, only one of namespace and appId."""
    from ..claim_mapping import Template, pointer_tokens
    from ..spiffe_id import trust_domain_problem

    if not isinstance(item, dict):
        raise ConfigError(f"{where}: expected a mapping with at least 'issuer'")
    unknown = sorted(set(item) - set(ISSUER_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(ISSUER_KEYS)}")
    issuer = item.get("issuer")
    if not isinstance(issuer, str) or not issuer.startswith("https://"):
        raise ConfigError(f"{where}.issuer: required, the tokens' iss (an https:// URL)")
    name = item.get("name", f"issuer-{index}")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name):
        raise ConfigError(f"{where}.name: 1-64 letters, digits, '.', '_' or '-'")
    source = item.get("source")
    if source is not None and (not isinstance(source, str) or not source.strip()):
        raise ConfigError(
            f"{where}.source: an https:// URL, a file path or the JWKS JSON (omit: OIDC discovery)"
        )
    audiences = _strings(item["audiences"], f"{where}.audiences") if "audiences" in item else ()
    claims = item.get("claims") or {}
    if not isinstance(claims, dict):
        raise ConfigError(f"{where}.claims: expected a mapping of claim (name or /json/pointer) to value")
    for claim, value in claims.items():
        try:
            pointer_tokens(str(claim))
        except ValueError as e:
            raise ConfigError(f"{where}.claims: {e}") from None
        if not isinstance(value, str | int | bool):
            raise ConfigError(f"{where}.claims.{claim}: expected a string, number or boolean")
    if ("namespace" in item) != ("appId" in item):
        raise ConfigError(
            f"{where}: namespace and appId are given together (or neither: sub is the SPIFFE ID)"
        )
    templates: dict[str, str | None] = {"namespace": None, "appId": None}
    for key in templates:
        if key in item:
            try:
                templates[key] = Template.parse(item[key], key).text
            except ValueError as e:
                raise ConfigError(f"{where}.{e}") from None
    td = item.get("trustDomain")
    if td is not None and (not isinstance(td, str) or (problem := trust_domain_problem(td))):
        raise ConfigError(f"{where}.trustDomain: {problem if isinstance(td, str) else 'expected a string'}")
    ca, durations = _fetch_settings(item, where, defaults)
    return JwtIssuerSettings(
        name=name,
        issuer=issuer,
        source=source.strip() if source else None,
        audiences=audiences,
        claims=tuple((str(k), v) for k, v in claims.items()),
        namespace=templates["namespace"],
        app_id=templates["appId"],
        trust_domain=td,
        ca_certificate=ca,
        min_refresh_interval=durations["minRefreshInterval"],
        request_timeout=durations["requestTimeout"],
    )
