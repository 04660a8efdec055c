"""deploy/kubernetes agrees with the CA: its flags are valid options, the RBAC grants exactly what
the KUBERNETES validator and the Kubernetes Secret store call, probes hit the real endpoints.
(Schema validity is `make lint-k8s`.)"""

from __future__ import annotations

import yaml

from ca_core.config import load_config

from support import REPO_ROOT

DEPLOY = REPO_ROOT / "deploy" / "kubernetes"


def docs() -> dict[tuple[str, str], dict]:
    out = {}
    for path in sorted(DEPLOY.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and "metadata" in doc:
                out[(doc["kind"], doc["metadata"]["name"])] = doc
    return out


def test_deployment_runs_two_non_root_replicas_with_valid_flags_and_probes():
    d = docs()[("Deployment", "sentryca")]
    assert d["spec"]["replicas"] >= 2
    pod = d["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    (ca,) = pod["containers"]
    assert ca["securityContext"]["readOnlyRootFilesystem"] is True
    assert ca["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert ca["livenessProbe"]["httpGet"]["path"] == "/livez"
    flags = dict(a.removeprefix("--").split("=", 1) for a in ca["args"][1:])
    cfg = load_config({k.replace("-", "_"): v for k, v in flags.items()}, {"NAMESPACE": "dapr-system"})
    assert cfg.effective_mode == "kubernetes"
    assert cfg.store_url == "kubernetes://dapr-system/dapr-trust-bundle"
    assert docs()[("PodDisruptionBudget", "sentryca")]["spec"]["minAvailable"] == 1


def test_rbac_is_least_privilege():
    cluster = docs()[("ClusterRole", "sentryca")]["rules"]
    assert {(r["apiGroups"][0], tuple(r["resources"]), tuple(r["verbs"])) for r in cluster} == {
        ("authentication.k8s.io", ("tokenreviews",), ("create",)),
        ("", ("pods",), ("get",)),
        ("dapr.io", ("configurations",), ("get",)),
    }
    ns = docs()[("Role", "sentryca-trust-bundle")]["rules"]
    named = [r for r in ns if r.get("resourceNames")]
    assert named and all(r["resourceNames"] == ["dapr-trust-bundle"] for r in named)
    assert {v for r in named for v in r["verbs"]} == {"get", "update"}
    assert {v for r in ns if not r.get("resourceNames") for v in r["verbs"]} == {"create"}
    assert all(set(r["resources"]) <= {"secrets", "configmaps"} for r in ns)
