"""Least privilege (issue 14 item 8): every AWS API call the code makes is allowed by the policy of
the principal that runs it in template.yaml, and the policy grants no action that no call needs.

The calls are read from the code's syntax tree, as tests/tools/test_slim_botocore.py reads the
operations the code uses: ``self.client.<op>(...)`` in a store adapter (its service: the module's),
``aws.client("<service>").<op>(...)`` anywhere. What a principal runs is its modules' uses of the
store's methods (a call, a bound method passed on, or a name given to ``getattr``), closed over the
store's own ``self.<method>`` calls: so the expiry function, which reads only ``load_public``, needs
only the public part's read. Each call becomes its IAM action: the API name, except where IAM
authorises it under another (HeadObject by s3:GetObject, ListObjectVersions by
s3:ListBucketVersions, GetObject of a VersionId by s3:GetObjectVersion)."""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tools.local_invoke import load_template

from support import REPO_ROOT

SRC = REPO_ROOT / "src"
RESOURCES = load_template(REPO_ROOT / "template.yaml")["Resources"]
STORES = {"s3": SRC / "adapters/stores/s3.py", "secretsmanager": SRC / "adapters/stores/secretsmanager.py"}
# The OIDC documents' publisher (--oidc-federation-bucket, template condition MakeOidcFederation):
# its ``self.client`` is an S3 client; the task runs it when the template turns federation on.
FEDERATION = SRC / "adapters/oidc_federation.py"
# The upstream authority's adapter (--upstream-authority, template condition UseUpstream): its calls
# go through ``self._call("<Operation>", ...)`` (bounded retries), to an acm-pca client.
UPSTREAM = SRC / "adapters/acm_pca.py"
# The root key in KMS (template condition UseKmsRoot): ``client``/``self._client`` in the adapter
# are KMS clients. Opening a key (open_key) is what parsing a KMS-rooted bundle needs; signing
# (KmsKey._kms_sign) what a principal that rotates (imports ca_core.rotation) needs too.
KMS = SRC / "adapters/kms.py"
# IAM names that differ from the API's
RENAMED = {"s3:HeadObject": "s3:GetObject", "s3:ListObjectVersions": "s3:ListBucketVersions"}
# Granted without an API call of its own: without s3:ListBucket, S3 answers GetObject of a missing
# key with 403 instead of 404, and the CA would read "access denied" for "empty store".
NO_CALL_NEEDED = {"s3:ListBucket"}


def iam_action(service: str, operation: str, keywords: set[str]) -> str:
    api = "".join(part.capitalize() for part in operation.split("_"))
    if service == "s3" and api == "GetObject" and "VersionId" in keywords:
        return "s3:GetObjectVersion"
    return RENAMED.get(f"{service}:{api}", f"{service}:{api}")


def _client_service(node: ast.expr, module_service: str | None) -> str | None:
    """The service of the client ``node`` names: ``self.client`` in a store adapter, or
    ``aws.client("svc")``."""
    if isinstance(node, ast.Attribute) and node.attr == "client" and module_service:
        return module_service
    if module_service == "kms" and (
        (isinstance(node, ast.Name) and node.id == "client")
        or (isinstance(node, ast.Attribute) and node.attr == "_client")
    ):
        return module_service
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "client"
        and node.args
        and isinstance(node.args[0], ast.Constant)
    ):
        return str(node.args[0].value)
    return None


def sdk_calls(tree: ast.AST, module_service: str | None = None) -> set[str]:
    """The IAM actions of the SDK calls under ``tree``."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            service = _client_service(node.func.value, module_service)
            if service is not None:
                out.add(iam_action(service, node.func.attr, {k.arg for k in node.keywords if k.arg}))
    return out


@dataclass
class Store:
    """A store adapter's methods: the actions each calls itself and the methods it calls."""

    actions: dict[str, set[str]] = field(default_factory=dict)
    calls: dict[str, set[str]] = field(default_factory=dict)

    @classmethod
    def read(cls, service: str) -> Store:
        tree = ast.parse(STORES[service].read_text())
        store = cls()
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and any(
                isinstance(f, ast.FunctionDef) and f.name == "client" for f in node.body
            ):
                for f in node.body:
                    if isinstance(f, ast.FunctionDef):
                        store.actions[f.name] = sdk_calls(f, service)
                        store.calls[f.name] = {
                            n.attr
                            for n in ast.walk(f)
                            if isinstance(n, ast.Attribute)
                            and isinstance(n.value, ast.Name)
                            and n.value.id == "self"
                        }
        assert store.actions, f"no store class in {STORES[service]}"
        return store

    def needs(self, entries: set[str]) -> set[str]:
        seen, todo = set(), list(entries & set(self.actions))
        while todo:
            name = todo.pop()
            if name not in seen:
                seen.add(name)
                todo.extend(self.calls[name] & set(self.actions))
        return set().union(*(self.actions[m] for m in seen))


def uses(paths: list[Path]) -> tuple[set[str], set[str]]:
    """(attribute and string names used, IAM actions of direct client calls) in ``paths``."""
    names: set[str] = set()
    actions: set[str] = set()
    for path in paths:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute):
                names.add(node.attr)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                names.add(node.value)
        actions |= sdk_calls(tree)
    return names, actions


# The code each principal runs (the console script's operator verbs run with the operator's own
# credentials, not a role of the template).
TASK = [
    *sorted((SRC / "handlers/server").glob("*.py")),
    SRC / "handlers/composition.py",
    SRC / "handlers/workers.py",
    SRC / "handlers/cli/serve.py",
    SRC / "adapters/stores/base.py",
]
PRINCIPALS = {
    "TaskRole": TASK,
    "ExpiryCheckFunction": [SRC / "handlers/expiry_check.py", SRC / "handlers/lambda_support.py"],
    "ConfigChangeFunction": [SRC / "handlers/config_change.py", SRC / "handlers/lambda_support.py"],
}


def statements(principal: str, conditions: dict[str, bool] | None = None) -> list:
    """The statements of ``principal``'s policies; a policy under Fn::If is there when
    ``conditions`` turn it on (default: every condition on)."""
    props = RESOURCES[principal]["Properties"]
    if principal == "TaskRole":
        out = []
        for p in props["Policies"]:
            if "Fn::If" in p:
                name, yes, _no = p["Fn::If"]
                if not (conditions or {}).get(name, conditions is None):
                    continue
                p = yes
            out.extend(p["PolicyDocument"]["Statement"])
        return out
    return [s for p in props["Policies"] for s in p["Statement"]]


def granted(stmts: list, conditions: dict[str, bool]) -> set[str]:
    """The actions ``stmts`` allow with ``conditions`` (Fn::If resolved, AWS::NoValue dropped)."""
    out: set[str] = set()
    for st in stmts:
        if isinstance(st, dict) and "Fn::If" in st:
            name, yes, no = st["Fn::If"]
            out |= granted([yes if conditions[name] else no], conditions)
        elif isinstance(st, dict) and st.get("Effect") == "Allow":
            acts = st["Action"]
            out |= set(acts if isinstance(acts, list) else [acts])
    return out


def imports(paths: list[Path], module: str) -> bool:
    """Whether one of ``paths`` imports from ``module``."""
    return any(
        isinstance(n, ast.ImportFrom) and n.module == module
        for path in paths
        for n in ast.walk(ast.parse(path.read_text()))
    )


def upstream_calls() -> set[str]:
    """The IAM actions of the upstream adapter's ``self._call("<Operation>", ...)`` calls."""
    return {
        f"acm-pca:{node.args[0].value}"
        for node in ast.walk(ast.parse(UPSTREAM.read_text()))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "_call"
        and node.args
        and isinstance(node.args[0], ast.Constant)
    }


def kms_calls(function: str) -> set[str]:
    """The IAM actions of the KMS calls in ``function`` (a function or method of adapters/kms.py)."""
    for node in ast.walk(ast.parse(KMS.read_text())):
        if isinstance(node, ast.FunctionDef) and node.name == function:
            return sdk_calls(node, "kms")
    raise AssertionError(f"no {function} in {KMS}")


def needed(
    principal: str, store_kind: str, federation: bool = False, upstream: bool = False, kms: bool = False
) -> set[str]:
    paths = PRINCIPALS[principal]
    names, direct = uses(paths)
    if federation and imports(paths, "adapters.oidc_federation"):
        direct |= sdk_calls(ast.parse(FEDERATION.read_text()), "s3")
    if upstream and imports(paths, "adapters.acm_pca"):
        direct |= upstream_calls()
    if kms and imports(paths, "adapters.kms"):
        direct |= kms_calls("open_key")
        if imports(paths, "ca_core.rotation"):
            direct |= kms_calls("_kms_sign")
    return direct | Store.read(store_kind).needs(names)


@pytest.mark.parametrize("kms", ["", "root", "issuer"], ids=["", "kms-root", "kms-issuer"])
@pytest.mark.parametrize("federation", [False, True], ids=["", "oidc-federation"])
@pytest.mark.parametrize("store_kind", sorted(STORES))
@pytest.mark.parametrize("principal", sorted(PRINCIPALS))
def test_each_policy_allows_exactly_the_calls_of_the_code_it_runs(principal, store_kind, federation, kms):
    conditions = {
        "UseS3": store_kind == "s3",
        "MakeOidcFederation": federation,
        "UseKmsRoot": kms == "root",
        "UseKmsIssuer": kms == "issuer",
    }
    allowed = granted(statements(principal, conditions), conditions)
    need = needed(principal, store_kind, federation=federation, kms=bool(kms))
    assert need, f"{principal} makes no AWS call?"
    assert need <= allowed, f"{principal} with a {store_kind} store is denied {sorted(need - allowed)}"
    assert allowed - need <= NO_CALL_NEEDED, f"{principal} may call more than it does: {allowed - need}"


def test_the_scan_sees_the_calls_it_must():
    """The analysis itself: known calls of each principal are found (so a test that passes is not
    one that found nothing)."""
    assert {"s3:GetObject", "s3:PutObject", "s3:ListBucketVersions"} <= needed("TaskRole", "s3")
    assert "s3:GetObjectVersion" in needed("TaskRole", "s3")  # find_accepted: a start on a refused bundle
    assert needed("ExpiryCheckFunction", "s3") == {"s3:GetObject"}
    assert needed("ExpiryCheckFunction", "secretsmanager") == {"secretsmanager:GetSecretValue"}
    assert {"s3:GetObjectVersion", "ssm:GetParameter", "ecs:UpdateService"} <= needed(
        "ConfigChangeFunction", "s3"
    )
    assert {"secretsmanager:PutSecretValue", "secretsmanager:UpdateSecretVersionStage"} <= needed(
        "TaskRole", "secretsmanager"
    )
    # the publisher of the OIDC documents reads and writes S3, also beside a Secrets Manager store
    assert {"s3:GetObject", "s3:PutObject"} <= needed("TaskRole", "secretsmanager", federation=True)
    assert not any(a.startswith("s3:") for a in needed("TaskRole", "secretsmanager"))
    # a KMS root: the task opens and signs; the config-change function only opens; expiry neither
    kms_open, kms_sign = {"kms:DescribeKey", "kms:GetPublicKey"}, {"kms:Sign"}
    assert kms_open | kms_sign <= needed("TaskRole", "s3", kms=True)
    assert kms_open <= needed("ConfigChangeFunction", "s3", kms=True)
    assert not kms_sign & needed("ConfigChangeFunction", "s3", kms=True)
    assert not any(a.startswith("kms:") for a in needed("ExpiryCheckFunction", "s3", kms=True))


@pytest.mark.parametrize("store_kind", sorted(STORES))
def test_with_an_upstream_the_task_may_call_private_ca_on_that_ca_only(store_kind):
    conditions = {
        "UseS3": store_kind == "s3",
        "MakeOidcFederation": False,
        "UseUpstream": True,
        "UseKmsRoot": False,
        "UseKmsIssuer": False,
    }
    allowed = granted(statements("TaskRole", conditions), conditions)
    need = needed("TaskRole", store_kind, upstream=True)
    assert need - needed("TaskRole", store_kind) == {
        "acm-pca:IssueCertificate",
        "acm-pca:GetCertificate",
        "acm-pca:GetCertificateAuthorityCertificate",
    }
    assert need <= allowed and allowed - need <= NO_CALL_NEEDED
    (policy,) = [
        p["Fn::If"][1]
        for p in RESOURCES["TaskRole"]["Properties"]["Policies"]
        if "Fn::If" in p and p["Fn::If"][0] == "UseUpstream"
    ]
    (statement,) = policy["PolicyDocument"]["Statement"]
    assert statement["Resource"] == {"Ref": "UpstreamCaArn"}  # the one CA, no wildcard
    # the functions never call it
    for principal in ("ExpiryCheckFunction", "ConfigChangeFunction"):
        assert not any(a.startswith("acm-pca:") for a in needed(principal, store_kind, upstream=True))


def test_the_federation_policy_writes_only_the_two_documents_of_its_own_bucket():
    (policy,) = [
        p["Fn::If"]
        for p in RESOURCES["TaskRole"]["Properties"]["Policies"]
        if "Fn::If" in p and p["Fn::If"][0] == "MakeOidcFederation"
    ]
    name, yes, no = policy
    assert (name, no) == ("MakeOidcFederation", {"Ref": "AWS::NoValue"})
    documents, listing = yes["PolicyDocument"]["Statement"]
    assert documents["Action"] == ["s3:GetObject", "s3:PutObject"]
    assert [r["Fn::Sub"] for r in documents["Resource"]] == [
        "${OidcBucket.Arn}/${OidcFederationPrefix}/.well-known/openid-configuration",
        "${OidcBucket.Arn}/${OidcFederationPrefix}/jwks.json",
    ]
    assert (listing["Action"], listing["Resource"]) == (
        "s3:ListBucket",
        {"Fn::GetAtt": ["OidcBucket", "Arn"]},
    )
    # the public read is of just those two objects, and the documents' bucket is not the bundle's
    public = RESOURCES["OidcBucketPolicy"]["Properties"]["PolicyDocument"]["Statement"][0]
    assert public["Principal"] == "*" and public["Action"] == "s3:GetObject"
    assert public["Resource"] == documents["Resource"]
    assert RESOURCES["OidcBucketPolicy"]["Properties"]["Bucket"] == {"Ref": "OidcBucket"}


def test_writes_are_only_on_the_bundle_and_its_public_part():
    (store,) = [
        s
        for s in statements("TaskRole")
        if isinstance(s, dict) and "Fn::If" in s and "Action" in s["Fn::If"][1]
    ][:1]
    s3, sm = store["Fn::If"][1:]
    assert [r["Fn::Sub"] for r in s3["Resource"]] == [
        "${BundleBucket.Arn}/${BundleKey}",
        "${BundleBucket.Arn}/${BundleKey}.public",
    ]
    assert sm["Resource"]["Fn::Sub"].endswith(":secret:${AWS::StackName}-bundle*")
    # the execution role reads the one configuration parameter (the task's Secrets), nothing else
    (exec_policy,) = RESOURCES["TaskExecutionRole"]["Properties"]["Policies"]
    (exec_stmt,) = exec_policy["PolicyDocument"]["Statement"]
    assert exec_stmt["Action"] == "ssm:GetParameters"
    assert exec_stmt["Resource"]["Fn::Sub"].endswith(":parameter/${AWS::StackName}/config")
    # and no policy grants a wildcard action
    for principal in PRINCIPALS:
        for conditions in ({"UseS3": True}, {"UseS3": False}):
            conditions["MakeOidcFederation"] = conditions["UseKmsRoot"] = conditions["UseKmsIssuer"] = True
            assert not any(re.search(r"\*", a) for a in granted(statements(principal), conditions))
