"""The AWS IAM validator's settings (design §6.6, §7.3): ``spec.mtls.tokenValidators[name=aws-iam]``
of the ``--config`` file, read and checked at start. Pure: the parsed YAML value is passed in.

```yaml
- name: aws-iam
  options:
    region: us-east-1                           # the STS region proofs must be signed for
    stsEndpoint: https://sts.us-east-1.amazonaws.com   # default: from the region
    caCertificate: /etc/sentryca/sts-ca.pem     # optional: PEM file or text trusted for stsEndpoint
    requestTimeout: 10s                         # the whole STS call
    serverId: sentryca.example.com              # default: the CA's SPIFFE ID
    allowedAccounts: ["111122223333"]
    rules:
      - name: orders                            # metric and audit label
        account: "111122223333"                 # optional: any allowed account
        role: orders-task                       # the IAM role name of the assumed-role ARN
        sessionName: "i-*"                      # optional glob over the role session name
        namespace: prod
        appId: orders
        trustDomain: example.org                # optional, default public
      - name: deployer
        user: ci-deployer                       # instead of role: an IAM user's name (no session)
        namespace: ci
        appId: deployer
```
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from ..durations import parse_duration
from ..errors import ConfigError
from ..spiffe_id import DEFAULT_TRUST_DOMAIN, app_id_problem, namespace_problem, trust_domain_problem

AWS_IAM_OPTION_KEYS = (
    "region",
    "stsEndpoint",
    "caCertificate",
    "requestTimeout",
    "serverId",
    "allowedAccounts",
    "rules",
)
RULE_KEYS = ("name", "account", "role", "user", "sessionName", "namespace", "appId", "trustDomain")
DEFAULT_STS_REGION = "us-east-1"
DEFAULT_STS_TIMEOUT = timedelta(seconds=10)
MAX_STS_TIMEOUT = timedelta(minutes=1)
MAX_RULES = 1000
MAX_SERVER_ID = 1024

_ACCOUNT = re.compile(r"[0-9]{12}")
_REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-[0-9]{1,2}")
_RULE_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
# IAM role names: up to 64 of letters, digits and +=,.@_- (IAM's CreateRole rules)
_ROLE = re.compile(r"[A-Za-z0-9+=,.@_-]{1,64}")
# session names: up to 64 of the same alphabet; the pattern adds the glob characters * and ?
_SESSION_PATTERN = re.compile(r"[A-Za-z0-9+=,.@_*?-]{1,64}")
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST = re.compile(rf"{_LABEL}(\.{_LABEL})*")


@dataclass(frozen=True)
class AwsIamRule:
    """One mapping rule: an assumed-role ARN of ``role`` (its session name matching the glob
    ``session_name`` when set), or, with ``user`` instead, the IAM user of that name (any path), in
    ``account`` when set (any allowed account otherwise), gets
    ``spiffe://<trust_domain>/ns/<namespace>/<app_id>``. Exactly one of ``role`` and ``user`` is
    set. ``name``: the label in metrics and audit."""

    name: str
    role: str | None
    namespace: str
    app_id: str
    trust_domain: str = DEFAULT_TRUST_DOMAIN
    account: str | None = None
    session_name: str | None = None
    user: str | None = None


@dataclass(frozen=True)
class AwsIamSettings:
    """``tokenValidators[name=aws-iam].options``. ``sts_endpoint``: ``https://HOST[:PORT]`` (plain
    ``http://`` only on loopback, for tests), where every proof is sent, whatever the proof says;
    ``region``: the region proofs are signed for; ``request_timeout``: the bound of one STS call;
    ``server_id``: the value the proof's server-id header must carry (None: the CA's SPIFFE ID);
    ``allowed_accounts``: 12-digit AWS account ids; ``rules``: first match wins;
    ``ca_certificate``: PEM text or a PEM file path trusted for an https endpoint (None: the
    system's store)."""

    sts_endpoint: str
    region: str
    allowed_accounts: tuple[str, ...]
    rules: tuple[AwsIamRule, ...]
    request_timeout: timedelta = DEFAULT_STS_TIMEOUT
    server_id: str | None = None
    ca_certificate: str | None = None


def default_sts_endpoint(region: str) -> str:
    """STS's regional endpoint in the ``aws`` partition (other partitions: set ``stsEndpoint``)."""
    return f"https://sts.{region}.amazonaws.com"


def endpoint_problem(url: str) -> str | None:
    """Why ``url`` cannot be the STS endpoint, or None: ``https://HOST[:PORT]`` with an optional
    ``/``; ``http://`` only for a loopback host. No user part, path, query or fragment."""
    m = re.fullmatch(r"(https?)://([^/?#@\s]+?)(?::([0-9]{1,5}))?/?", url)
    if m is None:
        return f"{url!r} is not https://HOST[:PORT] (no path, query or user part)"
    scheme, host, port = m.group(1), m.group(2), m.group(3)
    bare = host.strip("[]")
    try:
        ip = ipaddress.ip_address(bare)
    except ValueError:
        ip = None
        if not _HOST.fullmatch(host):
            return f"{url!r}: {host!r} is not a host name"
    if port is not None and not 0 < int(port) < 65536:
        return f"{url!r}: port {port} is out of range"
    loopback = bare == "localhost" or (ip is not None and ip.is_loopback)
    if scheme == "http" and not loopback:
        return f"{url!r}: plain http is accepted only for a loopback host (tests); use https"
    return None


def read_aws_iam(options: Any, where: str) -> AwsIamSettings:
    """The settings of one ``aws-iam`` entry's ``options``. Raises ConfigError naming the field:
    unknown keys, a bad region, endpoint, timeout or account, a rule whose mapped app id,
    namespace or trust domain is invalid, or that names an account not allowed."""
    if not isinstance(options, dict):
        raise ConfigError(f"{where}: expected a mapping with allowedAccounts and rules")
    unknown = sorted(str(k) for k in set(options) - set(AWS_IAM_OPTION_KEYS))
    if unknown:
        raise ConfigError(
            f"{where}: unknown option(s) {', '.join(unknown)}; known: {', '.join(AWS_IAM_OPTION_KEYS)}"
        )
    region = options.get("region", DEFAULT_STS_REGION)
    if not isinstance(region, str) or not _REGION.fullmatch(region):
        raise ConfigError(f"{where}.region: {str(region)[:100]!r} is not an AWS region (e.g. us-east-1)")
    endpoint = options.get("stsEndpoint") or default_sts_endpoint(region)
    if not isinstance(endpoint, str) or (problem := endpoint_problem(endpoint)):
        raise ConfigError(f"{where}.stsEndpoint: {problem if isinstance(endpoint, str) else 'not a string'}")
    ca = options.get("caCertificate")
    if ca is not None and (not isinstance(ca, str) or not ca.strip()):
        raise ConfigError(f"{where}.caCertificate: expected PEM text or a file path")
    if ca is not None and endpoint.startswith("http://"):
        raise ConfigError(f"{where}.caCertificate: set, but stsEndpoint {endpoint!r} is plain http")
    timeout = DEFAULT_STS_TIMEOUT
    if options.get("requestTimeout") not in (None, ""):
        try:
            timeout = parse_duration(str(options["requestTimeout"]))
        except ValueError as e:
            raise ConfigError(f"{where}.requestTimeout: {e}") from None
        if not timedelta(0) < timeout <= MAX_STS_TIMEOUT:
            raise ConfigError(f"{where}.requestTimeout: must be > 0 and at most 1m")
    server_id = options.get("serverId")
    if server_id is not None and (
        not isinstance(server_id, str)
        or not 0 < len(server_id) <= MAX_SERVER_ID
        or not server_id.isascii()
        or not server_id.isprintable()
    ):
        raise ConfigError(f"{where}.serverId: expected 1-{MAX_SERVER_ID} printable ASCII characters")
    accounts = options.get("allowedAccounts")
    if not isinstance(accounts, list) or not accounts:
        raise ConfigError(f"{where}.allowedAccounts: required, a list of 12-digit AWS account ids")
    allowed: list[str] = []
    for i, account in enumerate(accounts):
        text = str(account) if isinstance(account, str | int) and not isinstance(account, bool) else ""
        if not _ACCOUNT.fullmatch(text):
            raise ConfigError(
                f"{where}.allowedAccounts[{i}]: {str(account)[:50]!r} is not a 12-digit account id "
                "(quote it in YAML so leading zeros stay)"
            )
        allowed.append(text)
    rules = options.get("rules")
    if not isinstance(rules, list) or not rules:
        raise ConfigError(f"{where}.rules: required, a list of {{role, namespace, appId}}")
    if len(rules) > MAX_RULES:
        raise ConfigError(f"{where}.rules: at most {MAX_RULES} rules")
    parsed = tuple(_rule(r, f"{where}.rules[{i}]", i, allowed) for i, r in enumerate(rules))
    names = [r.name for r in parsed]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise ConfigError(f"{where}.rules: rule names must be distinct ({', '.join(dup)})")
    return AwsIamSettings(
        sts_endpoint=endpoint.rstrip("/"),
        region=region,
        allowed_accounts=tuple(allowed),
        rules=parsed,
        request_timeout=timeout,
        server_id=server_id,
        ca_certificate=ca,
    )


def _rule(item: Any, where: str, index: int, allowed: list[str]) -> AwsIamRule:
    if not isinstance(item, dict):
        raise ConfigError(f"{where}: expected a mapping with role, namespace and appId")
    unknown = sorted(str(k) for k in set(item) - set(RULE_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(RULE_KEYS)}")

    def text(key: str, required: bool) -> str | None:
        value = item.get(key)
        if value is None and not required:
            return None
        if isinstance(value, int) and not isinstance(value, bool) and key == "account":
            value = str(value)
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{where}.{key}: {'required, ' if required else ''}a non-empty string")
        return value

    name = text("name", False) or f"rule-{index}"
    if not _RULE_NAME.fullmatch(name):
        raise ConfigError(
            f"{where}.name: {name[:100]!r} must be 1-63 lowercase letters, digits, '-' or '_' "
            "(a metric label)"
        )
    role, user = text("role", False), text("user", False)
    if (role is None) == (user is None):
        raise ConfigError(
            f"{where}: exactly one of role (an assumed role's name) and user (an IAM user's name)"
        )
    for key, value in (("role", role), ("user", user)):
        if value is not None and not _ROLE.fullmatch(value):
            raise ConfigError(
                f"{where}.{key}: {value[:100]!r} is not an IAM {key} name (1-64 of A-Za-z0-9+=,.@_-)"
            )
    session = text("sessionName", False)
    if session is not None and user is not None:
        raise ConfigError(f"{where}.sessionName: only with role (an IAM user has no session)")
    if session is not None and not _SESSION_PATTERN.fullmatch(session):
        raise ConfigError(
            f"{where}.sessionName: {session[:100]!r} is not a session-name glob (1-64 of A-Za-z0-9+=,.@_- "
            "and the wildcards * and ?)"
        )
    account = text("account", False)
    if account is not None and account not in allowed:
        raise ConfigError(f"{where}.account: {account[:50]!r} is not in allowedAccounts")
    namespace = text("namespace", True) or ""
    app_id = text("appId", True) or ""
    trust_domain = text("trustDomain", False) or DEFAULT_TRUST_DOMAIN
    problems = [
        p
        for p in (app_id_problem(app_id), namespace_problem(namespace), trust_domain_problem(trust_domain))
        if p
    ]
    if problems:
        raise ConfigError(f"{where}: the mapped identity is invalid: {'; '.join(problems)}")
    return AwsIamRule(
        name=name,
        role=role,
        namespace=namespace,
        app_id=app_id,
        trust_domain=trust_domain,
        account=account,
        session_name=session,
        user=user,
    )
