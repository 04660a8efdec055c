"""template.yaml as a stack on a moto server (issue 14 item 7): moto's CloudFormation lacks many of
the template's resource types and its EventBridge cannot invoke a Lambda target, so
:func:`create_stack` makes the template's resources itself, through the services' own APIs, with
the names CloudFormation would give them and the properties the template gives them (every
``!Ref``, ``!Sub``, ``!GetAtt``, ``!If`` resolved here, for the stack's parameters). Each EventBridge rule's
Lambda target is an SQS queue (moto delivers a matched event to one), which a test reads and hands
to the function. :data:`LOCAL` says, for every resource type of the template, what stands in for
it locally; :func:`create_stack` fails on a type it does not name, so a new resource is classified
before the test passes again."""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from support.aws import aws_client

ACCOUNT = "123456789012"  # moto's account
REGION = "us-east-1"
NO_VALUE = object()  # AWS::NoValue: the property or list item is dropped

# Resource type → how the local emulation has it: "moto" (created on the moto server by
# create_stack), or what stands in for it and why it is not created there.
LOCAL: dict[str, str] = {
    "AWS::S3::Bucket": "moto: the bucket with the template's versioning, encryption, public access "
    "block, ownership and EventBridge notification (moto sends Object Created to the rules)",
    "AWS::S3::BucketPolicy": "not put: moto judges a statement whose Condition it cannot evaluate "
    "(aws:SecureTransport) as a deny, whatever its Effect, so DenyInsecureTransport would refuse every "
    "call (on AWS it refuses plain HTTP only, which this local endpoint is)",
    "AWS::SSM::Parameter": "moto: the configuration parameter, its value from the template; moto's "
    "SSM sends no EventBridge event, so the test puts the Parameter Store Change event itself",
    "AWS::ECS::Cluster": "moto: the cluster (the config-change function's UpdateService target)",
    "AWS::ECS::TaskDefinition": "moto: registered as written; the tasks themselves are `sentryca serve` "
    "processes run with its command and environment (moto runs no containers)",
    "AWS::ECS::Service": "moto: the service, so a configuration change's forceNewDeployment is recorded; "
    "nothing in moto starts its tasks: the test starts them",
    "AWS::Logs::LogGroup": "moto: the task log group with its retention",
    "AWS::Logs::MetricFilter": "moto: put as written; moto does not apply filters to log events, so the "
    "test applies the filter pattern to the tasks' JSON log lines",
    "AWS::IAM::Role": "moto: the task and execution roles with their inline policies (not enforced by "
    "moto; tests/e2e/test_iam.py checks them against the code's calls)",
    "AWS::Events::Rule": "moto: each rule with the template's event pattern; its Lambda target "
    "replaced by an SQS queue (moto's EventBridge cannot invoke Lambda)",
    "AWS::SQS::Queue": "moto: the functions' dead-letter queue with its attributes",
    "AWS::SNS::Topic": "moto: the alarm topic (the alarms' actions)",
    "AWS::CloudWatch::Alarm": "moto: every alarm as written (moto does not evaluate alarms: the test "
    "checks that what the tasks and functions emit reaches each alarm's metric)",
    "AWS::CloudWatch::Dashboard": "moto: the dashboard body as written",
    "AWS::Serverless::Function": "not in moto: run in-process (tools.local_invoke, as `make invoke`) "
    "and by `sam local invoke` in the stand-in Lambda image, with the event the rule delivered; "
    "the expiry function with its schedule's Input",
    "AWS::Lambda::Permission": "not created: it lets EventBridge invoke the function; locally the "
    "rules' targets are SQS queues the test reads",
    "AWS::SNS::Subscription": "not created: condition HasAlarmEmail is false (AlarmEmail empty); an "
    "e-mail subscription has no local stand-in",
    "AWS::CloudTrail::Trail": "not created: condition MakeTrail needs StoreKind secretsmanager; this "
    "stack is StoreKind s3",
    "AWS::KMS::Key": "not created: conditions UseKmsRoot and UseKmsIssuer need RootKeyKms and "
    "IssuerKeyKms (default false); KMS root and issuer keys are tested against moto's KMS by "
    "tests/e2e/test_kms.py and tests/e2e/test_kms_issuer.py",
    "AWS::KMS::Alias": "not created: conditions UseKmsRoot and UseKmsIssuer (default false), as the keys'",
    "AWS::IAM::OIDCProvider": "not created: condition MakeOidcProvider needs OidcFederation (default "
    "false); the federation publisher and the provider's call shape are tested against moto by "
    "tests/adapters/test_oidc_federation.py",
    "AWS::EC2::VPCEndpoint": "not created: condition MakeVpcEndpoints is false (CreateVpcEndpoints "
    "default); the tasks reach moto on loopback",
    "AWS::EC2::SecurityGroup": "moto: each group with its ingress and egress rules, in a VPC and two "
    "subnets made for VpcId and SubnetIds (moto filters no traffic: the tasks are processes on "
    "loopback ports)",
    "AWS::ElasticLoadBalancingV2::LoadBalancer": "moto: the internal NLB with its attributes; moto "
    "forwards nothing: the client connects to each task's port, or through LoadBalancerStandIn, by "
    "the NLB's DNS name, which the tasks' certificates carry (SENTRY_SERVER_NAMES)",
    "AWS::ElasticLoadBalancingV2::TargetGroup": "moto: the target group with its health check and "
    "attributes (client IP preservation); no targets register, nothing checks them",
    "AWS::ElasticLoadBalancingV2::Listener": "moto: the TCP listener forwarding to the target group",
    "AWS::ApplicationAutoScaling::ScalableTarget": "moto: registered as written; nothing scales "
    "locally: the test starts the tasks (two, and a third as scaling or a replacement would)",
    "AWS::ApplicationAutoScaling::ScalingPolicy": "moto: put as written (moto never acts on it)",
}


def cfn_name(stack: str, logical_id: str, suffix: str, *, lower: bool = False) -> str:
    """A physical name in CloudFormation's shape: STACK-LOGICALID-SUFFIX."""
    name = f"{stack}-{logical_id}-{suffix}"
    return name.lower() if lower else name


def camel(node: Any) -> Any:
    """CloudFormation's ECS property names as the API's (``ContainerPort`` → ``containerPort``)."""
    if isinstance(node, dict):
        return {(k[0].lower() + k[1:]): camel(v) for k, v in node.items()}
    if isinstance(node, list):
        return [camel(v) for v in node]
    return node


@dataclass
class Stack:
    """The template resolved for stack ``name`` with ``parameters`` (over the defaults): physical
    names (``refs``: what ``!Ref`` gives), attributes (``attrs``: ``!GetAtt``), conditions."""

    template: dict[str, Any]
    name: str
    parameters: dict[str, Any]
    nlb_dns_name: str = "internal-sentryca-local.elb.amazonaws.com"  # !GetAtt LoadBalancer.DNSName
    # CloudFormation's random part of physical names: moto's state is one per process, shared by
    # every moto server in it, so two stacks in one test run must not share names
    suffix: str = field(default_factory=lambda: uuid.uuid4().hex[:8].upper())
    refs: dict[str, Any] = field(default_factory=dict)
    attrs: dict[tuple[str, str], Any] = field(default_factory=dict)
    created: dict[str, str] = field(default_factory=dict)  # logical id → what was done with it

    def __post_init__(self) -> None:
        params = {k: v.get("Default") for k, v in self.template.get("Parameters", {}).items()}
        # a parameter's value is a string (a Number's too), a list for a List type
        self.refs |= {
            k: v if isinstance(v, list) or v is None else str(v)
            for k, v in (params | self.parameters).items()
        }
        self.refs |= {
            "AWS::StackName": self.name,
            "AWS::Region": REGION,
            "AWS::AccountId": ACCOUNT,
            "AWS::Partition": "aws",
            "AWS::NoValue": NO_VALUE,
        }
        plan(self)

    @property
    def resources(self) -> dict[str, Any]:
        return self.template["Resources"]

    def condition(self, name: str) -> bool:
        return bool(self.resolve(self.template["Conditions"][name]))

    def included(self, logical_id: str) -> bool:
        cond = self.resources[logical_id].get("Condition")
        return cond is None or self.condition(cond)

    def props(self, logical_id: str) -> dict[str, Any]:
        return self.resolve(self.resources[logical_id].get("Properties", {}))

    def sub(self, text: str, extra: dict[str, Any] | None = None) -> str:
        def one(m: re.Match) -> str:
            ref = m.group(1)
            if extra and ref in extra:
                return str(extra[ref])
            if "." in ref and not ref.startswith("AWS::"):
                logical, attr = ref.split(".", 1)
                return str(self.attrs[(logical, attr)])
            return str(self.refs[ref])

        return re.sub(r"\$\{([^}!]+)\}", one, text)

    def resolve(self, node: Any) -> Any:
        """``node`` with every intrinsic function replaced by its value; AWS::NoValue dropped."""
        if isinstance(node, list):
            return [v for v in (self.resolve(x) for x in node) if v is not NO_VALUE]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            ((key, arg),) = node.items()
            if key == "Ref":
                return self.refs[arg]
            if key == "Fn::GetAtt":
                return self.attrs[tuple(arg)]
            if key == "Fn::Sub":
                if isinstance(arg, list):
                    return self.sub(arg[0], self.resolve(arg[1]))
                return self.sub(arg)
            if key == "Fn::If":
                cond, yes, no = arg
                return self.resolve(yes if self.condition(cond) else no)
            if key == "Fn::Equals":
                a, b = self.resolve(arg)
                return str(a) == str(b)
            if key == "Fn::Not":
                return not self.resolve(arg[0])
            if key == "Fn::And":
                return all(self.resolve(arg))
            if key == "Fn::Or":
                return any(self.resolve(arg))
            if key in ("Condition", "Fn::Condition"):
                return self.condition(arg)
            if key == "Fn::Join":
                sep, items = arg
                return sep.join(str(x) for x in self.resolve(items))
            if key == "Fn::Split":
                sep, text = arg
                return str(self.resolve(text)).split(sep)
        out = {k: self.resolve(v) for k, v in node.items()}
        return {k: v for k, v in out.items() if v is not NO_VALUE}

    def function_env(self, logical_id: str) -> dict[str, str]:
        """A function's variables as Lambda would set them: Globals, then its own."""
        env = dict(self.resolve(self.template["Globals"]["Function"]["Environment"]["Variables"]))
        own = self.resources[logical_id]["Properties"].get("Environment", {}).get("Variables", {})
        return {k: str(v) for k, v in (env | self.resolve(own)).items()}

    def container(self) -> dict[str, Any]:
        (container,) = self.props("TaskDefinition")["ContainerDefinitions"]
        return container


def plan(stack: Stack) -> None:
    """Every physical name and attribute CloudFormation would give the resources used here."""
    s, refs, attrs = stack.name, stack.refs, stack.attrs
    bucket = cfn_name(s, "BundleBucket", stack.suffix, lower=True)
    refs["BundleBucket"] = bucket
    attrs[("BundleBucket", "Arn")] = f"arn:aws:s3:::{bucket}"
    for logical, res in stack.resources.items():
        kind = res["Type"]
        name = cfn_name(s, logical, stack.suffix)
        if kind == "AWS::IAM::Role":
            refs[logical] = name
            attrs[(logical, "Arn")] = f"arn:aws:iam::{ACCOUNT}:role/{name}"
        elif kind == "AWS::SQS::Queue":
            refs[logical] = f"https://sqs.{REGION}.amazonaws.com/{ACCOUNT}/{name}"
            attrs[(logical, "Arn")] = f"arn:aws:sqs:{REGION}:{ACCOUNT}:{name}"
            attrs[(logical, "QueueName")] = name
        elif kind == "AWS::SNS::Topic":
            refs[logical] = f"arn:aws:sns:{REGION}:{ACCOUNT}:{name}"
        elif kind == "AWS::Events::Rule":
            refs[logical] = name
            attrs[(logical, "Arn")] = f"arn:aws:events:{REGION}:{ACCOUNT}:rule/{name}"
        elif kind == "AWS::Serverless::Function":
            refs[logical] = name
            attrs[(logical, "Arn")] = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{name}"
        elif kind == "AWS::ECS::Cluster":
            refs[logical] = name
            attrs[(logical, "Arn")] = f"arn:aws:ecs:{REGION}:{ACCOUNT}:cluster/{name}"
        elif kind == "AWS::CloudWatch::Alarm":
            refs[logical] = name
        elif kind == "AWS::ElasticLoadBalancingV2::LoadBalancer":
            refs[logical] = f"arn:aws:elasticloadbalancing:{REGION}:{ACCOUNT}:loadbalancer/net/{name}"
            attrs[(logical, "DNSName")] = stack.nlb_dns_name
    # named by their properties
    for logical, prop in (
        ("ConfigParameter", "Name"),
        ("ServerLogGroup", "LogGroupName"),
        ("Dashboard", "DashboardName"),
    ):
        refs[logical] = stack.resolve(stack.resources[logical]["Properties"][prop])
    cluster = refs["Cluster"]
    service = stack.resolve(stack.resources["Service"]["Properties"]["ServiceName"])
    refs["Service"] = f"arn:aws:ecs:{REGION}:{ACCOUNT}:service/{cluster}/{service}"
    attrs[("Service", "Name")] = service
    family = stack.resolve(stack.resources["TaskDefinition"]["Properties"]["Family"])
    refs["TaskDefinition"] = f"arn:aws:ecs:{REGION}:{ACCOUNT}:task-definition/{family}:1"
    # what is not created locally (security groups, target group ...): a placeholder id
    for logical in stack.resources:
        refs.setdefault(logical, f"local-{cfn_name(s, logical, stack.suffix).lower()}")


def create_stack(stack: Stack, endpoint: str) -> dict[str, str]:
    """Create the stack's resources on the moto server at ``endpoint`` (see :data:`LOCAL`);
    returns rule logical id → the URL of the SQS queue standing in for its Lambda target."""
    unknown = {r["Type"] for r in stack.resources.values()} - set(LOCAL)
    assert not unknown, f"resource types with no local stand-in named in support/stack.py: {unknown}"
    s3, ssm = aws_client("s3", endpoint), aws_client("ssm", endpoint)
    events, sqs = aws_client("events", endpoint), aws_client("sqs", endpoint)
    logs, iam = aws_client("logs", endpoint), aws_client("iam", endpoint)
    cw, sns, ecs = (
        aws_client("cloudwatch", endpoint),
        aws_client("sns", endpoint),
        aws_client("ecs", endpoint),
    )
    targets: dict[str, str] = {}
    # the VPC and subnets the parameters name (they exist before the stack)
    ec2 = aws_client("ec2", endpoint)
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    stack.refs["VpcId"] = vpc
    stack.refs["SubnetIds"] = [
        ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.0.{i}.0/24", AvailabilityZone=f"{REGION}{az}")["Subnet"][
            "SubnetId"
        ]
        for i, az in enumerate("ab")
    ]
    order = sorted(stack.resources, key=lambda k: _ORDER.index(stack.resources[k]["Type"]))
    for logical in order:
        kind = stack.resources[logical]["Type"]
        if not stack.included(logical):
            stack.created[logical] = (
                f"not created: condition {stack.resources[logical]['Condition']} is false"
            )
            continue
        if not LOCAL[kind].startswith("moto"):
            stack.created[logical] = LOCAL[kind]
            continue
        p = stack.props(logical)
        name = cfn_name(stack.name, logical, stack.suffix)
        if kind == "AWS::S3::Bucket":
            bucket = stack.refs[logical]
            s3.create_bucket(Bucket=bucket)
            s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration=p["VersioningConfiguration"])
            rules = [  # CloudFormation's names for the API's
                {
                    "ApplyServerSideEncryptionByDefault" if k == "ServerSideEncryptionByDefault" else k: v
                    for k, v in rule.items()
                }
                for rule in p["BucketEncryption"]["ServerSideEncryptionConfiguration"]
            ]
            s3.put_bucket_encryption(Bucket=bucket, ServerSideEncryptionConfiguration={"Rules": rules})
            s3.put_public_access_block(
                Bucket=bucket, PublicAccessBlockConfiguration=p["PublicAccessBlockConfiguration"]
            )
            s3.put_bucket_ownership_controls(Bucket=bucket, OwnershipControls=p["OwnershipControls"])
            if p["NotificationConfiguration"]["EventBridgeConfiguration"]["EventBridgeEnabled"]:
                s3.put_bucket_notification_configuration(
                    Bucket=bucket, NotificationConfiguration={"EventBridgeConfiguration": {}}
                )
        elif kind == "AWS::SSM::Parameter":
            ssm.put_parameter(Name=p["Name"], Type=p["Type"], Value=p["Value"], Description=p["Description"])
        elif kind == "AWS::ECS::Cluster":
            ecs.create_cluster(clusterName=stack.refs[logical], settings=camel(p["ClusterSettings"]))
        elif kind == "AWS::ECS::TaskDefinition":
            td = camel(p)
            ecs.register_task_definition(
                **{
                    k: td[k]
                    for k in (
                        "family",
                        "containerDefinitions",
                        "requiresCompatibilities",
                        "networkMode",
                        "cpu",
                        "memory",
                        "executionRoleArn",
                        "taskRoleArn",
                        "runtimePlatform",
                        "volumes",
                    )
                }
            )
        elif kind == "AWS::ECS::Service":
            svc = camel(p)
            ecs.create_service(**svc)
        elif kind.startswith(
            ("AWS::EC2::", "AWS::ElasticLoadBalancingV2::", "AWS::ApplicationAutoScaling::")
        ):
            _create_network(stack, logical, kind, p, endpoint)
        elif kind == "AWS::Logs::LogGroup":
            logs.create_log_group(logGroupName=p["LogGroupName"])
            logs.put_retention_policy(logGroupName=p["LogGroupName"], retentionInDays=p["RetentionInDays"])
        elif kind == "AWS::Logs::MetricFilter":
            logs.put_metric_filter(
                logGroupName=p["LogGroupName"],
                filterName=name,
                filterPattern=p["FilterPattern"],
                metricTransformations=[  # the API's dimensions are a map
                    camel(t) | {"dimensions": {d["Key"]: d["Value"] for d in t.get("Dimensions", [])}}
                    for t in p["MetricTransformations"]
                ],
            )
        elif kind == "AWS::IAM::Role":
            iam.create_role(
                RoleName=stack.refs[logical],
                AssumeRolePolicyDocument=json.dumps(p["AssumeRolePolicyDocument"]),
            )
            for policy in p.get("Policies", []):
                iam.put_role_policy(
                    RoleName=stack.refs[logical],
                    PolicyName=policy["PolicyName"],
                    PolicyDocument=json.dumps(policy["PolicyDocument"]),
                )
        elif kind == "AWS::SQS::Queue":
            sqs.create_queue(
                QueueName=stack.attrs[(logical, "QueueName")], Attributes={k: str(v) for k, v in p.items()}
            )
        elif kind == "AWS::SNS::Topic":
            sns.create_topic(Name=name, Attributes={k: str(v) for k, v in p.items()})
        elif kind == "AWS::Events::Rule":
            events.put_rule(
                Name=stack.refs[logical],
                EventPattern=json.dumps(p["EventPattern"]),
                Description=p["Description"],
                State="ENABLED",
            )
            standins = []
            for target in p["Targets"]:
                # the function the rule invokes, by its ARN: its stand-in queue
                function = target["Arn"].rsplit(":", 1)[1]
                url = sqs.create_queue(QueueName=f"{function}-events")["QueueUrl"]
                arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
                    "QueueArn"
                ]
                standins.append({"Id": target["Id"], "Arn": arn})
                targets[logical] = url
            events.put_targets(Rule=stack.refs[logical], Targets=standins)
        elif kind == "AWS::CloudWatch::Alarm":
            cw.put_metric_alarm(AlarmName=stack.refs[logical], **p)
        elif kind == "AWS::CloudWatch::Dashboard":
            cw.put_dashboard(DashboardName=p["DashboardName"], DashboardBody=p["DashboardBody"])
        stack.created[logical] = "created in moto"
    return targets


def _permissions(rules: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """CloudFormation's security group rules as the API's IpPermissions."""
    out = []
    for rule in rules:
        perm: dict[str, Any] = {"IpProtocol": str(rule["IpProtocol"])}
        if "FromPort" in rule:
            perm |= {"FromPort": rule["FromPort"], "ToPort": rule["ToPort"]}
        described = {"Description": rule["Description"]} if "Description" in rule else {}
        if "CidrIp" in rule:
            perm["IpRanges"] = [{"CidrIp": rule["CidrIp"], **described}]
        if "SourceSecurityGroupId" in rule:
            perm["UserIdGroupPairs"] = [{"GroupId": rule["SourceSecurityGroupId"], **described}]
        out.append(perm)
    return out


def _create_network(stack: Stack, logical: str, kind: str, p: dict[str, Any], endpoint: str) -> None:
    """The security groups, the NLB with its target group and listener, the service's scaling."""
    short = f"{stack.name[:8]}-{logical[:12]}-{stack.suffix}"  # ELB names: at most 32 characters
    if kind == "AWS::EC2::SecurityGroup":
        ec2 = aws_client("ec2", endpoint)
        group = ec2.create_security_group(
            GroupName=cfn_name(stack.name, logical, stack.suffix),
            Description=p["GroupDescription"],
            VpcId=p["VpcId"],
        )["GroupId"]
        stack.refs[logical] = group
        stack.attrs[(logical, "GroupId")] = group
        ec2.authorize_security_group_ingress(
            GroupId=group, IpPermissions=_permissions(p["SecurityGroupIngress"])
        )
        if "SecurityGroupEgress" in p:  # replaces the default allow-all rule, as CloudFormation does
            ec2.revoke_security_group_egress(
                GroupId=group, IpPermissions=[{"IpProtocol": "-1", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}]
            )
            ec2.authorize_security_group_egress(
                GroupId=group, IpPermissions=_permissions(p["SecurityGroupEgress"])
            )
    elif kind == "AWS::ElasticLoadBalancingV2::LoadBalancer":
        elb = aws_client("elbv2", endpoint)
        (lb,) = elb.create_load_balancer(
            Name=short,
            Type=p["Type"],
            Scheme=p["Scheme"],
            Subnets=p["Subnets"],
            SecurityGroups=p["SecurityGroups"],
        )["LoadBalancers"]
        elb.modify_load_balancer_attributes(
            LoadBalancerArn=lb["LoadBalancerArn"], Attributes=p["LoadBalancerAttributes"]
        )
        stack.refs[logical] = lb["LoadBalancerArn"]
        stack.attrs[(logical, "DNSName")] = lb["DNSName"]
    elif kind == "AWS::ElasticLoadBalancingV2::TargetGroup":
        elb = aws_client("elbv2", endpoint)
        attributes = p.pop("TargetGroupAttributes")
        (tg,) = elb.create_target_group(Name=short, **p)["TargetGroups"]
        elb.modify_target_group_attributes(TargetGroupArn=tg["TargetGroupArn"], Attributes=attributes)
        stack.refs[logical] = tg["TargetGroupArn"]
    elif kind == "AWS::ElasticLoadBalancingV2::Listener":
        elb = aws_client("elbv2", endpoint)
        (listener,) = elb.create_listener(**p)["Listeners"]
        stack.refs[logical] = listener["ListenerArn"]
    elif kind == "AWS::ApplicationAutoScaling::ScalableTarget":
        aws_client("application-autoscaling", endpoint).register_scalable_target(**p)
        stack.refs[logical] = p  # what the scaling policy needs of it
    elif kind == "AWS::ApplicationAutoScaling::ScalingPolicy":
        target = p.pop("ScalingTargetId")
        aws_client("application-autoscaling", endpoint).put_scaling_policy(
            **p, **{k: target[k] for k in ("ServiceNamespace", "ResourceId", "ScalableDimension")}
        )


# creation order: what a resource names exists before it
_ORDER = [
    "AWS::IAM::Role",
    "AWS::IAM::OIDCProvider",
    "AWS::KMS::Key",
    "AWS::KMS::Alias",
    "AWS::S3::Bucket",
    "AWS::S3::BucketPolicy",
    "AWS::SSM::Parameter",
    "AWS::Logs::LogGroup",
    "AWS::Logs::MetricFilter",
    "AWS::SQS::Queue",
    "AWS::SNS::Topic",
    "AWS::SNS::Subscription",
    "AWS::ECS::Cluster",
    "AWS::ECS::TaskDefinition",
    "AWS::EC2::SecurityGroup",
    "AWS::EC2::VPCEndpoint",
    "AWS::ElasticLoadBalancingV2::LoadBalancer",
    "AWS::ElasticLoadBalancingV2::TargetGroup",
    "AWS::ElasticLoadBalancingV2::Listener",
    "AWS::ECS::Service",
    "AWS::ApplicationAutoScaling::ScalableTarget",
    "AWS::ApplicationAutoScaling::ScalingPolicy",
    "AWS::Serverless::Function",
    "AWS::Lambda::Permission",
    "AWS::Events::Rule",
    "AWS::CloudTrail::Trail",
    "AWS::CloudWatch::Alarm",
    "AWS::CloudWatch::Dashboard",
]


class LoadBalancerStandIn:
    """The NLB's part locally: a TCP listener on 127.0.0.1 passing each new connection through
    to one registered target (round robin), bytes untouched (TLS ends in the task, as behind the
    NLB). ``deregister`` sends no new connection to a target and leaves its open ones alone, as
    the template's target group does (``deregistration_delay.connection_termination.enabled``
    false) until the task itself stops."""

    def __init__(self) -> None:
        import socket
        import threading

        self._socket, self._threading = socket, threading
        self.targets: list[int] = []  # registered target ports
        self.connections = 0
        self._next = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, name="nlb-accept", daemon=True).start()

    def register(self, port: int) -> None:
        with self._lock:
            self.targets.append(port)

    def deregister(self, port: int) -> None:
        with self._lock:
            self.targets.remove(port)

    def _accept(self) -> None:
        while True:
            try:
                downstream, _ = self._listener.accept()
            except OSError:  # closed
                return
            with self._lock:
                if not self.targets:
                    downstream.close()
                    continue
                port = self.targets[self._next % len(self.targets)]
                self._next += 1
                self.connections += 1
            try:
                upstream = self._socket.create_connection(("127.0.0.1", port), timeout=10)
            except OSError:
                downstream.close()
                continue
            upstream.settimeout(None)
            ended = self._threading.Semaphore(0)  # released by each direction as it ends
            for a, b in ((downstream, upstream), (upstream, downstream)):
                self._threading.Thread(target=self._pump, args=(a, b, ended), daemon=True).start()
            self._threading.Thread(
                target=self._close_after, args=(ended, downstream, upstream), daemon=True
            ).start()

    def _pump(self, source, sink, ended) -> None:
        """Copy ``source`` to ``sink`` until ``source`` ends, then end ``sink``'s writing (FIN
        passes through, as TCP through the NLB)."""
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            try:
                sink.shutdown(self._socket.SHUT_WR)
            except OSError:
                pass
            ended.release()

    @staticmethod
    def _close_after(ended, *sockets) -> None:
        ended.acquire()
        ended.acquire()
        for s in sockets:
            s.close()

    def close(self) -> None:
        self._listener.close()
