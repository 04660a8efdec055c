"""template.yaml agrees with the code: every function's handler imports, every alarm watches a
metric with exactly the dimensions the handlers emit, and the EventBridge patterns match the
sample events (checked by moto's EventBridge delivering to an SQS queue: put_rule with the
template's pattern, put_events with the sample, read the queue)."""

from __future__ import annotations

import json
import re
import shutil
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from ca_core.config import load_config
from handlers import lambda_support as ls
from tools.local_invoke import function_handler, load_template, resolve_handler

from support import REPO_ROOT
from support.aws import aws_client
from support.pki import make_bundle, write_bundle

TEMPLATE = load_template(REPO_ROOT / "template.yaml")
RESOURCES = TEMPLATE["Resources"]
EVENTS = REPO_ROOT / "events"
# What the sample events name, as the template's references resolve in a stack called "sentryca".
REFS = {
    "AWS::StackName": "sentryca",
    "AWS::Partition": "aws",
    "AWS::Region": "us-east-1",
    "AWS::AccountId": "123456789012",
    "BundleBucket": "sentryca-bundles-example",
    "BundleKey": "sentry/bundle.json",
    "ConfigParameter": "/sentryca/config",
}


def resolve(node):
    """Substitute Ref and Fn::Sub with REFS (enough for the event patterns)."""
    if isinstance(node, dict):
        if set(node) == {"Ref"}:
            return REFS[node["Ref"]]
        if set(node) == {"Fn::Sub"}:
            return re.sub(r"\$\{([^}]+)\}", lambda m: REFS[m.group(1)], node["Fn::Sub"])
        return {k: resolve(v) for k, v in node.items()}
    if isinstance(node, list):
        return [resolve(v) for v in node]
    return node


def functions() -> list[str]:
    return sorted(k for k, v in RESOURCES.items() if v["Type"] == "AWS::Serverless::Function")


def test_every_function_handler_imports():
    assert functions() == ["ConfigChangeFunction", "ExpiryCheckFunction"]
    for fn in functions():
        assert callable(resolve_handler(function_handler(TEMPLATE, fn)))


def test_the_schedule_is_hourly_and_sends_the_sample_event():
    schedule = RESOURCES["ExpiryCheckFunction"]["Properties"]["Events"]["Hourly"]
    assert schedule["Type"] == "ScheduleV2"
    assert schedule["Properties"]["ScheduleExpression"] == "rate(1 hour)"
    assert json.loads(schedule["Properties"]["Input"]) == json.loads((EVENTS / "scheduled.json").read_text())


def test_insecure_is_only_an_explicit_opt_in():
    params = TEMPLATE["Parameters"]
    assert params["AllowInsecure"]["Default"] == "false"
    env = {
        e["Name"]: e["Value"]
        for e in RESOURCES["TaskDefinition"]["Properties"]["ContainerDefinitions"][0]["Environment"]
    }
    assert env["SENTRY_ALLOW_INSECURE_ON_NETWORK"] == {"Ref": "AllowInsecure"}
    assert env["SENTRY_LISTEN_ADDRESS"] == "0.0.0.0"
    assert "IdentitySourceUnlessInsecure" in TEMPLATE["Rules"]
    assert RESOURCES["LoadBalancer"]["Properties"]["Scheme"] == "internal"


def test_the_service_rotates_automatically_with_a_propagation_window_option():
    env = {
        e["Name"]: e["Value"]
        for e in RESOURCES["TaskDefinition"]["Properties"]["ContainerDefinitions"][0]["Environment"]
    }
    assert env["SENTRY_AUTO_ROTATE"] == "true"
    assert env["SENTRY_ROOT_PROPAGATION_WINDOW"] == {"Ref": "RootPropagationWindow"}
    assert env["SENTRY_STORE_POLL_INTERVAL"] == "30s"  # replicas apply each other's rotation steps
    cfg = load_config(
        {},
        {k: v for k, v in env.items() if isinstance(v, str)}
        | {"SENTRY_ROOT_PROPAGATION_WINDOW": TEMPLATE["Parameters"]["RootPropagationWindow"]["Default"]},
    )
    assert cfg.auto_rotate and cfg.root_propagation_window.total_seconds() == 86400


def test_the_lifetimes_are_parameters_whose_empty_default_leaves_them_unset():
    env = {
        e["Name"]: e["Value"]
        for e in RESOURCES["TaskDefinition"]["Properties"]["ContainerDefinitions"][0]["Environment"]
    }
    params = TEMPLATE["Parameters"]
    assert env["SENTRY_ROOT_TTL"] == {"Ref": "RootTTL"} and env["SENTRY_ISSUER_TTL"] == {"Ref": "IssuerTTL"}
    fixed = {k: v for k, v in env.items() if isinstance(v, str)}
    window = {"SENTRY_ROOT_PROPAGATION_WINDOW": params["RootPropagationWindow"]["Default"]}
    defaults = {
        "SENTRY_ROOT_TTL": params["RootTTL"]["Default"],
        "SENTRY_ISSUER_TTL": params["IssuerTTL"]["Default"],
    }
    cfg = load_config({}, fixed | window | defaults)
    assert (cfg.root_ttl, cfg.issuer_ttl) == (None, None)  # empty: one year, or kept by a rotation
    short = load_config({}, fixed | window | {"SENTRY_ROOT_TTL": "168h", "SENTRY_ISSUER_TTL": "24h"})
    assert (short.root_ttl.total_seconds(), short.issuer_ttl.total_seconds()) == (7 * 86400, 86400)
    for name in ("RootTTL", "IssuerTTL"):
        pattern = params[name]["AllowedPattern"]
        assert re.fullmatch(pattern, "") and re.fullmatch(pattern, "24h")


def _emitted_dimensions(capsys, tmp_path, monkeypatch) -> dict[str, set[tuple[str, ...]]]:
    """Run the expiry check (file store) and collect metric name → dimension sets from its EMF."""
    from support.aws import emitted

    store = tmp_path / "credentials"
    write_bundle(store, make_bundle(datetime.now(UTC)))
    monkeypatch.setenv("SENTRY_TRUST_BUNDLE_STORE", f"file://{store}")
    monkeypatch.setenv("POWERTOOLS_SERVICE_NAME", "sentryca")
    from handlers import expiry_check

    capsys.readouterr()
    expiry_check.handler({}, None)
    found: dict[str, set] = {}
    for name, items in emitted(capsys.readouterr().out).items():
        found.setdefault(name, set()).update(dims for _, dims, _ in items)
    return found


def test_alarms_watch_what_the_handlers_emit(capsys, tmp_path, monkeypatch):
    emitted = _emitted_dimensions(capsys, tmp_path, monkeypatch)
    # Metrics the code declares, with their dimensions (the config-change ones are asserted in
    # handlers/test_lambda_handlers against moto).
    declared = {
        ls.COVERAGE: {("service",)},
        ls.COVERAGE_RATIO: {("service",)},
        ls.CONFIG_CHANGE_REJECTED: {("service",)},
        ls.BUNDLE_REVERTED: {("service",)},
        ls.EXPIRY_CHECK_FAILED: {("service",)},
    }
    assert emitted[ls.COVERAGE] == declared[ls.COVERAGE]
    assert emitted[ls.COVERAGE_RATIO] == declared[ls.COVERAGE_RATIO]
    service_value = TEMPLATE["Globals"]["Function"]["Environment"]["Variables"]["POWERTOOLS_SERVICE_NAME"]
    every_alarm = {k: v["Properties"] for k, v in RESOURCES.items() if v["Type"] == "AWS::CloudWatch::Alarm"}
    # the metric-math alarms on the tasks' EMF figures: tests/e2e/test_emf.py; the upstream's
    # EMF gauge: test_the_upstream_alarm_watches_the_tasks_emf_gauge_only_with_an_upstream
    alarms = {k: v for k, v in every_alarm.items() if "Metrics" not in v and k != "UpstreamFailingAlarm"}
    assert set(every_alarm) - set(alarms) == {
        "SignFailureRatioAlarm",
        "SignNoSuccessAlarm",
        "UpstreamFailingAlarm",
    }
    assert set(alarms) == {
        "CoverageAlarm",
        "ExpiryCheckErrorsAlarm",
        "ExpiryCheckFailedAlarm",
        "ConfigChangeRejectedAlarm",
        "BundleRevertedAlarm",
        "StoreDegradedAlarm",
        "OidcPublishFailedAlarm",
    }
    from_logs = _log_metrics()
    for name, alarm in alarms.items():
        dims = tuple(d["Name"] for d in alarm["Dimensions"])
        if alarm["Namespace"] == "AWS/Lambda":
            assert alarm["MetricName"] == "Errors" and dims == ("FunctionName",), name
            assert alarm["Dimensions"][0]["Value"] == {"Ref": "ExpiryCheckFunction"}
            continue
        if alarm["MetricName"] in from_logs:  # counted from the CA's own log lines
            assert (alarm["Namespace"], dims) == from_logs[alarm["MetricName"]], name
            assert alarm["AlarmActions"] == [{"Ref": "AlarmTopic"}]
            continue
        assert alarm["Namespace"] == ls.NAMESPACE, name
        assert dims in declared[alarm["MetricName"]], name
        assert alarm["Dimensions"][0]["Value"] == service_value, name
        assert alarm["AlarmActions"] == [{"Ref": "AlarmTopic"}]
    coverage = alarms["CoverageAlarm"]
    # coverage over what the lifetimes call for (ca_core.expiry.coverage_alarm_within): below 1
    assert coverage["MetricName"] == ls.COVERAGE_RATIO
    assert (coverage["Threshold"], coverage["Period"], coverage["TreatMissingData"]) == (
        1,
        3600,
        "breaching",
    )
    assert coverage["ComparisonOperator"] == "LessThanThreshold"


def test_the_upstream_alarm_watches_the_tasks_emf_gauge_only_with_an_upstream():
    """UpstreamFailingAlarm exists only with UpstreamCaArn and watches what a task's EMF writer
    (handlers.emf) writes for a CA with an upstream whose last attempt failed: UpstreamFailing,
    namespace SentryCA, dimension service; a CA without one writes no such metric."""
    import time

    from handlers import emf
    from handlers.metrics import Metrics

    resource = RESOURCES["UpstreamFailingAlarm"]
    assert resource["Condition"] == "UseUpstream"
    assert TEMPLATE["Conditions"]["UseUpstream"] == {
        "Fn::Not": [{"Fn::Equals": [{"Ref": "UpstreamCaArn"}, ""]}]
    }
    alarm = resource["Properties"]
    metrics = Metrics()
    metrics.upstream().failed("upstream_throttled")
    (doc,) = emf.documents(emf.samples(metrics.registry.collect()), {}, time.time(), "s")
    (directive,) = doc["_aws"]["CloudWatchMetrics"]
    assert doc[emf.UPSTREAM_FAILING] == 1
    assert {"Name": emf.UPSTREAM_FAILING, "Unit": "None"} in directive["Metrics"]
    assert alarm["Namespace"] == directive["Namespace"] == emf.NAMESPACE
    assert alarm["MetricName"] == emf.UPSTREAM_FAILING
    assert [[d["Name"] for d in alarm["Dimensions"]]] == directive["Dimensions"] == [["service"]]
    assert alarm["Dimensions"][0]["Value"] == {"Ref": "AWS::StackName"}
    # every task failing (the minimum over them), two hours running; no data (no task) is not an alarm
    assert (alarm["Statistic"], alarm["Period"], alarm["EvaluationPeriods"], alarm["DatapointsToAlarm"]) == (
        "Minimum",
        3600,
        2,
        2,
    )
    assert (alarm["Threshold"], alarm["ComparisonOperator"], alarm["TreatMissingData"]) == (
        1,
        "GreaterThanOrEqualToThreshold",
        "notBreaching",
    )
    assert alarm["AlarmActions"] == alarm["OKActions"] == [{"Ref": "AlarmTopic"}]
    assert '"AWS Private CA gives no issuer"' in alarm["AlarmDescription"]
    assert "\n## AWS Private CA gives no issuer\n" in (REPO_ROOT / "docs" / "runbook.md").read_text()
    (plain,) = emf.documents(emf.samples(Metrics().registry.collect()), {}, time.time(), "s")
    assert emf.UPSTREAM_FAILING not in plain


def _log_metrics() -> dict[str, tuple[str, tuple[str, ...]]]:
    """Metric name → (namespace, dimension names) of the template's log metric filters."""
    out = {}
    for res in RESOURCES.values():
        if res["Type"] == "AWS::Logs::MetricFilter":
            for t in res["Properties"]["MetricTransformations"]:
                out[t["MetricName"]] = (
                    t["MetricNamespace"],
                    tuple(d["Key"] for d in t.get("Dimensions", [])),
                )
    return out


def test_a_degraded_store_alarms_from_the_cas_own_json_log_line(caplog, tmp_path):
    """The StoreDegraded filter matches the line a CA logs (``--log-as-json``) when its store
    is found empty, and its ``store`` dimension is the store URL the alarm names."""
    import logging

    from handlers.logs import JsonFormatter
    from handlers.server import CertificateAuthority

    from support.ca import ca_config

    flt = RESOURCES["StoreDegradedMetricFilter"]["Properties"]
    assert flt["LogGroupName"] == {"Ref": "ServerLogGroup"}
    assert flt["FilterPattern"] == '{ $.event = "store_degraded" }'
    (transformation,) = flt["MetricTransformations"]
    assert transformation["Dimensions"] == [{"Key": "store", "Value": "$.store"}]
    alarm = RESOURCES["StoreDegradedAlarm"]["Properties"]
    assert alarm["Dimensions"][0]["Value"] == TEMPLATE["Outputs"]["TrustBundleStore"]["Value"]
    caplog.set_level(logging.INFO)
    store = tmp_path / "credentials"
    clock = _Clock()
    ca = CertificateAuthority(clock=clock)
    ca.start(ca_config(store))
    try:
        shutil.rmtree(store)
        clock.t += timedelta(hours=2)
        ca.maintain()
    finally:
        ca.stop(grace=0)
    lines = [json.loads(JsonFormatter().format(r)) for r in caplog.records]
    (line,) = [x for x in lines if x.get("event") == "store_degraded"]
    assert line["store"] == f"file://{store}" and line["level"] == "error"


class _Clock:
    def __init__(self) -> None:
        self.t = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.t


def test_the_bootstrap_policy_is_a_parameter_of_the_service():
    param = TEMPLATE["Parameters"]["BootstrapPolicy"]
    assert param["Default"] == "if-never-held" and param["AllowedValues"] == ["if-never-held", "never"]
    env = {
        e["Name"]: e["Value"]
        for e in RESOURCES["TaskDefinition"]["Properties"]["ContainerDefinitions"][0]["Environment"]
    }
    assert env["SENTRY_BOOTSTRAP_POLICY"] == {"Ref": "BootstrapPolicy"}
    for value in param["AllowedValues"]:
        assert load_config({}, {"SENTRY_BOOTSTRAP_POLICY": value}).bootstrap_policy == value


def test_jwt_issuance_is_a_parameter_of_the_service_off_by_default():
    param = TEMPLATE["Parameters"]["JwtEnabled"]
    assert param["Default"] == "false" and param["AllowedValues"] == ["true", "false"]
    env = {
        e["Name"]: e["Value"]
        for e in RESOURCES["TaskDefinition"]["Properties"]["ContainerDefinitions"][0]["Environment"]
    }
    # on with JwtEnabled, and always with serverless federation (whose documents need the JWKS)
    assert env["SENTRY_JWT_ENABLED"] == {"Fn::If": ["MakeOidcFederation", "true", {"Ref": "JwtEnabled"}]}
    for value in param["AllowedValues"]:
        assert load_config({}, {"SENTRY_JWT_ENABLED": value}).jwt_enabled is (value == "true")


RULES = {
    "S3BundleChangedRule": ["s3_eventbridge.json"],
    "SecretBundleChangedRule": ["secretsmanager_cloudtrail.json"],
    "ConfigParameterChangedRule": ["ssm_parameter_change.json"],
}


def _deliver(events, sqs, pattern: dict, sample: dict) -> list[dict]:
    """put_rule(pattern) → SQS target; put_events(sample); what reached the queue."""
    name = f"t-{uuid.uuid4().hex[:12]}"
    url = sqs.create_queue(QueueName=name)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    events.put_rule(Name=name, EventPattern=json.dumps(pattern), State="ENABLED")
    events.put_targets(Rule=name, Targets=[{"Id": "q", "Arn": arn}])
    entry = {
        "Source": sample["source"],
        "DetailType": sample["detail-type"],
        "Detail": json.dumps(sample["detail"]),
        "Resources": sample.get("resources", []),
    }
    assert events.put_events(Entries=[entry])["FailedEntryCount"] == 0
    got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1).get("Messages", [])
    events.remove_targets(Rule=name, Ids=["q"])
    events.delete_rule(Name=name)
    return [json.loads(m["Body"]) for m in got]


@pytest.mark.parametrize("rule", sorted(RULES))
def test_eventbridge_patterns_match_the_samples_and_nothing_else(rule, aws_env):
    events = aws_client("events", aws_env["AWS_ENDPOINT_URL"])
    sqs = aws_client("sqs", aws_env["AWS_ENDPOINT_URL"])
    pattern = resolve(RESOURCES[rule]["Properties"]["EventPattern"])
    target = RESOURCES[rule]["Properties"]["Targets"][0]["Arn"]
    assert target == {"Fn::GetAtt": ["ConfigChangeFunction", "Arn"]}
    for sample_name in RULES[rule]:
        sample = json.loads((EVENTS / sample_name).read_text())
        delivered = _deliver(events, sqs, pattern, sample)
        assert len(delivered) == 1 and delivered[0]["detail"] == sample["detail"], rule
        # The same event about something else does not match.
        other = json.loads(json.dumps(sample))
        if "object" in other["detail"]:
            other["detail"]["object"]["key"] += ".public"
        elif "requestParameters" in other["detail"]:
            other["detail"]["requestParameters"]["secretId"] = "sentryca-bundle.public"
        else:
            other["detail"]["name"] = "/another/parameter"
        assert _deliver(events, sqs, pattern, other) == [], rule


def test_secret_rule_also_matches_the_secret_arn(aws_env):
    events = aws_client("events", aws_env["AWS_ENDPOINT_URL"])
    sqs = aws_client("sqs", aws_env["AWS_ENDPOINT_URL"])
    pattern = resolve(RESOURCES["SecretBundleChangedRule"]["Properties"]["EventPattern"])
    sample = json.loads((EVENTS / "secretsmanager_cloudtrail.json").read_text())
    sample["detail"]["requestParameters"]["secretId"] = (
        "arn:aws:secretsmanager:us-east-1:123456789012:secret:sentryca-bundle-AbCdEf"
    )
    assert len(_deliver(events, sqs, pattern, sample)) == 1


def _actions(statements) -> set[str]:
    out: set[str] = set()
    for st in statements:
        if isinstance(st, dict) and "Fn::If" in st:
            for branch in st["Fn::If"][1:]:
                out |= _actions([branch])
        elif isinstance(st, dict) and "Action" in st:
            acts = st["Action"]
            out |= set(acts if isinstance(acts, list) else [acts])
    return out


def _sdk_calls(module: str) -> set[str]:
    """IAM actions of the SDK calls a store module makes (``self.client.get_object`` → GetObject)."""
    text = (REPO_ROOT / "src" / "adapters" / "stores" / f"{module}.py").read_text()
    service = {"s3": "s3", "secretsmanager": "secretsmanager"}[module]
    # The IAM name differs from the API's; HeadObject is authorised by s3:GetObject.
    renamed = {"ListObjectVersions": "ListBucketVersions", "HeadObject": "GetObject"}
    calls = set()
    for method in re.findall(r"self\.client\.(\w+)\(", text):
        api = "".join(p.capitalize() for p in method.split("_"))
        calls.add(f"{service}:{renamed.get(api, api)}")
    return calls


def test_the_task_role_allows_every_call_the_stores_make():
    granted = _actions(RESOURCES["TaskRole"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"])
    needed = _sdk_calls("s3") | _sdk_calls("secretsmanager")
    assert "s3:ListBucketVersions" in needed  # held_before: a delete marker shows a lost bundle
    assert needed <= granted, needed - granted
    # A versioned read (find_accepted: the last accepted version, design §5.4) is GetObjectVersion.
    assert "s3:GetObjectVersion" in granted
    config_change = _actions(RESOURCES["ConfigChangeFunction"]["Properties"]["Policies"][0]["Statement"])
    # The config-change function reads the bundle, its record and earlier versions, puts a refused
    # bundle back and publishes the record of an accepted one: the stores' calls, and ECS for a
    # changed parameter; never a delete.
    assert needed | {"s3:GetObjectVersion", "ecs:UpdateService"} <= config_change, needed - config_change
    assert not any(":Delete" in a for a in config_change)
    expiry = _actions(RESOURCES["ExpiryCheckFunction"]["Properties"]["Policies"][0]["Statement"])
    assert expiry == {"s3:GetObject", "secretsmanager:GetSecretValue"}
    # ... and only on the public part.
    (only,) = RESOURCES["ExpiryCheckFunction"]["Properties"]["Policies"][0]["Statement"]
    s3_branch, sm_branch = only["Fn::If"][1:]
    assert s3_branch["Resource"]["Fn::Sub"].endswith("${BundleKey}.public")
    assert sm_branch["Resource"]["Fn::Sub"].endswith("-bundle.public-*")


def test_every_checkov_skip_is_justified_and_the_functions_keep_failed_events():
    skips = {
        (name, skip["id"]): skip.get("comment", "")
        for name, res in RESOURCES.items()
        for skip in res.get("Metadata", {}).get("checkov", {}).get("skip", [])
    }
    assert skips, "checkov skips are expected in the template's Metadata"
    assert all(len(comment) > 40 for comment in skips.values()), skips
    for fn in ("ExpiryCheckFunction", "ConfigChangeFunction"):
        props = RESOURCES[fn]["Properties"]
        assert props["DeadLetterQueue"]["TargetArn"] == {"Fn::GetAtt": ["FunctionDeadLetterQueue", "Arn"]}
        assert props["ReservedConcurrentExecutions"] >= 1


def test_the_tasks_see_the_clients_addresses_and_only_the_nlb_admits_them():
    """Issue 14 item 3: client IP preservation on; AllowedClientCidr enforced at the NLB only."""
    attrs = {a["Key"]: a["Value"] for a in RESOURCES["TargetGroup"]["Properties"]["TargetGroupAttributes"]}
    assert attrs["preserve_client_ip.enabled"] == "true"
    assert RESOURCES["TargetGroup"]["Properties"]["TargetType"] == "ip"  # where the default is off
    (nlb_rule,) = RESOURCES["LoadBalancerSecurityGroup"]["Properties"]["SecurityGroupIngress"]
    assert nlb_rule["CidrIp"] == {"Ref": "AllowedClientCidr"} and nlb_rule["FromPort"] == 50001
    task_rules = RESOURCES["ServiceSecurityGroup"]["Properties"]["SecurityGroupIngress"]
    # AWS matches traffic through the NLB against the NLB's security group, preserved client
    # address or not: no CIDR rule, so nothing reaches a task around the NLB
    assert {r["FromPort"] for r in task_rules} == {50001, 8080}
    assert all(r == r | {"SourceSecurityGroupId": {"Ref": "LoadBalancerSecurityGroup"}} for r in task_rules)
    assert not any("CidrIp" in r or "CidrIpv6" in r for r in task_rules)
    env = {
        e["Name"]: e["Value"]
        for e in RESOURCES["TaskDefinition"]["Properties"]["ContainerDefinitions"][0]["Environment"]
    }
    assert env["SENTRY_IDENTITY_RATE_LIMIT"] == {"Ref": "IdentityRateLimit"}
    cfg = load_config(
        {}, {"SENTRY_IDENTITY_RATE_LIMIT": str(TEMPLATE["Parameters"]["IdentityRateLimit"]["Default"])}
    )
    assert cfg.identity_rate_limit == 10


def test_private_subnets_get_the_endpoints_the_tasks_need_as_an_option():
    """Issue 14 item 9: with CreateVpcEndpoints, an endpoint for every AWS service a task reaches."""
    endpoints = {k: v for k, v in RESOURCES.items() if v["Type"] == "AWS::EC2::VPCEndpoint"}
    services = {
        v["Properties"]["ServiceName"]["Fn::Sub"].removeprefix("com.amazonaws.${AWS::Region}."): v
        for v in endpoints.values()
    }
    # what a task reaches: ECR (image), its log driver, the execution role's SSM read, its store
    task_policy = _actions(RESOURCES["TaskRole"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"])
    store_services = {a.split(":")[0] for a in task_policy}
    # and, with RootKeyKms, KMS (the root key signs issuers)
    (kms_policy,) = [
        p["Fn::If"][1]
        for p in RESOURCES["TaskRole"]["Properties"]["Policies"]
        if "Fn::If" in p and p["Fn::If"][0] == "UseKmsRoot"
    ]
    assert {a.split(":")[0] for a in _actions(kms_policy["PolicyDocument"]["Statement"])} == {"kms"}
    (container,) = RESOURCES["TaskDefinition"]["Properties"]["ContainerDefinitions"]
    assert container["LogConfiguration"]["LogDriver"] == "awslogs"
    # and with UpstreamCaArn, AWS Private CA (the task policy's upstream-authority statement);
    # with the AWS IAM validator, STS (tests/e2e/test_template_identity.py)
    assert set(services) == {"ecr.api", "ecr.dkr", "logs", "ssm", "acm-pca", "kms", "sts"} | store_services
    for name, res in services.items():
        assert res["Condition"] in (
            "MakeVpcEndpoints",
            "MakeSecretsManagerEndpoint",
            "MakeAcmPcaEndpoint",
            "MakeKmsEndpoint",
            "MakeStsEndpoint",
        )
        props = res["Properties"]
        if name == "s3":  # a gateway: the bundle and ECR's image layers
            assert props["VpcEndpointType"] == "Gateway" and props["RouteTableIds"] == {
                "Ref": "RouteTableIds"
            }
        else:
            assert props["VpcEndpointType"] == "Interface" and props["PrivateDnsEnabled"] is True
            assert props["SubnetIds"] == {"Ref": "SubnetIds"}
            assert props["SecurityGroupIds"] == [{"Ref": "VpcEndpointSecurityGroup"}]
    assert services["secretsmanager"]["Condition"] == "MakeSecretsManagerEndpoint"
    assert TEMPLATE["Conditions"]["MakeSecretsManagerEndpoint"] == {
        "Fn::And": [{"Fn::Condition": "MakeVpcEndpoints"}, {"Fn::Condition": "UseSecretsManager"}]
    }
    assert services["acm-pca"]["Condition"] == "MakeAcmPcaEndpoint"
    assert TEMPLATE["Conditions"]["MakeAcmPcaEndpoint"] == {
        "Fn::And": [{"Fn::Condition": "MakeVpcEndpoints"}, {"Fn::Condition": "UseUpstream"}]
    }
    assert services["kms"]["Condition"] == "MakeKmsEndpoint"
    assert TEMPLATE["Conditions"]["MakeKmsEndpoint"] == {
        "Fn::And": [{"Fn::Condition": "MakeVpcEndpoints"}, {"Fn::Condition": "UseKms"}]
    }
    assert TEMPLATE["Conditions"]["UseKms"] == {
        "Fn::Or": [{"Fn::Condition": "UseKmsRoot"}, {"Fn::Condition": "UseKmsIssuer"}]
    }
    assert TEMPLATE["Parameters"]["CreateVpcEndpoints"]["Default"] == "false"
    (rule,) = RESOURCES["VpcEndpointSecurityGroup"]["Properties"]["SecurityGroupIngress"]
    assert rule["SourceSecurityGroupId"] == {"Ref": "ServiceSecurityGroup"} and rule["FromPort"] == 443
    assert "RouteTablesForEndpoints" in TEMPLATE["Rules"]


def test_an_issuer_key_in_kms_is_an_optional_parameter_off_by_default():
    """Issue 16 item 2: IssuerKeyKms makes IssuerKey (asymmetric, SIGN_VERIFY, retained), gives its
    ARN to the tasks as SENTRY_ISSUER_KEY, and only then lets the task role open and sign with it
    and the config-change function open it; off, nothing of it exists."""
    param = TEMPLATE["Parameters"]["IssuerKeyKms"]
    assert (param["Default"], param["AllowedValues"]) == ("false", ["true", "false"])
    assert TEMPLATE["Conditions"]["UseKmsIssuer"] == {"Fn::Equals": [{"Ref": "IssuerKeyKms"}, "true"]}
    key = RESOURCES["IssuerKey"]
    assert key["Condition"] == "UseKmsIssuer" and key["DeletionPolicy"] == "Retain"
    assert (key["Properties"]["KeySpec"], key["Properties"]["KeyUsage"]) == ("ECC_NIST_P256", "SIGN_VERIFY")
    assert RESOURCES["IssuerKeyAlias"]["Condition"] == "UseKmsIssuer"
    env = {
        e["Name"]: e["Value"]
        for e in RESOURCES["TaskDefinition"]["Properties"]["ContainerDefinitions"][0]["Environment"]
    }
    assert env["SENTRY_ISSUER_KEY"] == {"Fn::If": ["UseKmsIssuer", {"Fn::Sub": "kms://${IssuerKey.Arn}"}, ""]}
    arn = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    assert load_config({}, {"SENTRY_ISSUER_KEY": f"kms://{arn}"}).issuer_key == f"kms://{arn}"
    assert load_config({}, {"SENTRY_ISSUER_KEY": ""}).issuer_key is None  # off: a local issuer key
    (policy,) = [
        p["Fn::If"]
        for p in RESOURCES["TaskRole"]["Properties"]["Policies"]
        if "Fn::If" in p and p["Fn::If"][0] == "UseKmsIssuer"
    ]
    (statement,) = policy[1]["PolicyDocument"]["Statement"]
    assert statement["Action"] == ["kms:DescribeKey", "kms:GetPublicKey", "kms:Sign"]
    assert statement["Resource"] == {"Fn::GetAtt": ["IssuerKey", "Arn"]} and policy[2] == {
        "Ref": "AWS::NoValue"
    }
    config_change = [
        s["Fn::If"][1]
        for p in RESOURCES["ConfigChangeFunction"]["Properties"]["Policies"]
        for s in p["Statement"]
        if isinstance(s, dict) and s.get("Fn::If", [None])[0] == "UseKmsIssuer"
    ]
    assert [s["Action"] for s in config_change] == [["kms:DescribeKey", "kms:GetPublicKey"]]
    assert TEMPLATE["Outputs"]["IssuerKeyArn"]["Condition"] == "UseKmsIssuer"


def test_the_image_is_documented_by_digest():
    description = " ".join(TEMPLATE["Parameters"]["ImageUri"]["Description"].split())
    assert "@sha256:" in description and "by digest" in description


def test_the_published_issuer_is_the_oidc_provider_s_url_and_the_task_s_setting():
    """Serverless federation (design §9.9): the provider URL the tasks publish under is the IAM
    OIDC provider's URL, the stack's output, and the example role's condition-key prefix; the
    task's environment with federation on loads as a valid configuration."""
    env = {
        e["Name"]: e["Value"]
        for e in RESOURCES["TaskDefinition"]["Properties"]["ContainerDefinitions"][0]["Environment"]
    }
    on = {
        k: v["Fn::If"][1] for k, v in env.items() if k.startswith("SENTRY_OIDC_") or k == "SENTRY_JWT_ISSUER"
    }
    assert all(env[k]["Fn::If"][0] == "MakeOidcFederation" and env[k]["Fn::If"][2] == "" for k in on)
    url = on["SENTRY_OIDC_FEDERATION_PROVIDER_URL"]
    assert on["SENTRY_JWT_ISSUER"] == url  # the tokens' iss is the provider URL
    assert (
        RESOURCES["OidcProvider"]["Properties"]["Url"]
        == url
        == TEMPLATE["Outputs"]["OidcProviderUrl"]["Value"]
    )
    _, names = RESOURCES["OidcExampleRole"]["Properties"]["AssumeRolePolicyDocument"]["Fn::Sub"]
    assert "https://" + names["Issuer"]["Fn::Sub"] == url["Fn::Sub"]
    assert RESOURCES["OidcProvider"]["Properties"]["ClientIdList"] == [{"Ref": "OidcAudience"}]
    refs = REFS | {"OidcBucket": "sentryca-oidc-example", "OidcFederationPrefix": "sentryca"}
    resolved = {
        "SENTRY_OIDC_FEDERATION_BUCKET": refs["OidcBucket"],
        "SENTRY_OIDC_FEDERATION_PREFIX": refs["OidcFederationPrefix"],
        "SENTRY_OIDC_FEDERATION_PROVIDER_URL": url["Fn::Sub"]
        .replace("${OidcBucket.RegionalDomainName}", "sentryca-oidc-example.s3.us-east-1.amazonaws.com")
        .replace("${OidcFederationPrefix}", "sentryca"),
        "SENTRY_TRUST_BUNDLE_STORE": f"s3://{REFS['BundleBucket']}/{REFS['BundleKey']}",
    }
    resolved |= {
        "SENTRY_JWT_ENABLED": "true",
        "SENTRY_JWT_ISSUER": resolved["SENTRY_OIDC_FEDERATION_PROVIDER_URL"],
    }
    cfg = load_config({}, resolved)
    assert cfg.jwt_enabled and cfg.jwt_issuer == cfg.oidc_federation_provider_url
    assert (
        cfg.oidc_federation_provider_url
        == "https://sentryca-oidc-example.s3.us-east-1.amazonaws.com/sentryca"
    )
    # federation off: every value is empty, which the loader reads as no setting
    assert load_config({}, dict.fromkeys(on, "")).oidc_federation_bucket is None


def test_failed_oidc_publication_alarms_from_the_cas_own_json_log_line(caplog):
    """The OidcPublishFailed filter matches the line the federation thread logs (``--log-as-json``)
    when it cannot publish, and its ``destination`` dimension is what the alarm names."""
    import logging

    from adapters.oidc_federation import S3DocumentPublisher
    from handlers.logs import JsonFormatter
    from handlers.server.federation import Federation

    flt = RESOURCES["OidcPublishFailedMetricFilter"]["Properties"]
    assert flt["FilterPattern"] == '{ $.event = "oidc_publish_failed" }'
    assert RESOURCES["OidcPublishFailedMetricFilter"]["Condition"] == "MakeOidcFederation"
    (transformation,) = flt["MetricTransformations"]
    assert transformation["Dimensions"] == [{"Key": "destination", "Value": "$.destination"}]
    alarm = RESOURCES["OidcPublishFailedAlarm"]["Properties"]
    assert alarm["Dimensions"][0]["Value"] == {"Fn::Sub": "s3://${OidcBucket}/${OidcFederationPrefix}/"}

    class Unreachable:  # an S3 client whose every call fails as the SDK's would
        def get_object(self, **kwargs):
            from botocore.exceptions import EndpointConnectionError

            raise EndpointConnectionError(endpoint_url="https://s3.example")

    caplog.set_level(logging.INFO)
    publisher = S3DocumentPublisher("sentryca-oidc-example", "sentryca", client=Unreachable())
    assert not Federation(publisher, "https://x.example", lambda: b'{"keys":[]}').sync()
    lines = [json.loads(JsonFormatter().format(r)) for r in caplog.records]
    (line,) = [x for x in lines if x.get("event") == "oidc_publish_failed"]
    assert line["destination"] == "s3://sentryca-oidc-example/sentryca/" and line["level"] == "warning"
