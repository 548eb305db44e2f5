"""The CDK app (deploy/cdk): every stack of a stage synthesizes offline with cdk-nag's
AwsSolutions and HIPAA Security packs reporting nothing unacknowledged, and the templates
hold what the platform relies on. One synthesis for the module (about 20 s: jsii + node)."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION", "1")

from aws_cdk import Environment  # noqa: E402
from aws_cdk.assertions import Match, Template  # noqa: E402
from pixelfleet_deploy.agent_tokens import LAUNCH_HOOK, TERMINATE_HOOK, VPC_ENI_ACTIONS  # noqa: E402
from pixelfleet_deploy.autoscaler import DESCRIBE_ACTIONS  # noqa: E402
from pixelfleet_deploy.config import ConfigError, StageConfig, stage_from_context  # noqa: E402
from pixelfleet_deploy.control_plane import matchmaker_environment  # noqa: E402
from pixelfleet_deploy.cost import idle_cost, markdown_table  # noqa: E402
from pixelfleet_deploy.cost import main as cost_main  # noqa: E402
from pixelfleet_deploy.gpu_fleet import PARAMETER_READS, SESSION_MANAGER_ACTIONS  # noqa: E402
from pixelfleet_deploy.nag import REASONS, SPECIFIC_WILDCARDS  # noqa: E402
from pixelfleet_deploy.stage import Stage, build_bootstrap, build_stage, new_app  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
STAGE = StageConfig(name="test", image_tag="0123456789ab")
ENV = Environment(account="123456789012", region="us-east-1")


@pytest.fixture(scope="module")
def synthesized(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stage, Path]]:
    out = tmp_path_factory.mktemp("cdk.out")
    app = new_app(str(out))
    stage = build_stage(app, STAGE, ENV)
    app.synth()  # raises on any unacknowledged cdk-nag finding
    yield stage, out


def template(synthesized: tuple[Stage, Path], part: str) -> Template:
    _, out = synthesized
    return Template.from_json(json.loads((out / f"pixelfleet-test-{part}.template.json").read_text()))


def test_cdk_nag_reports_nothing_unacknowledged_and_every_acknowledgement_has_a_reason(
    synthesized: tuple[Stage, Path],
) -> None:
    _, out = synthesized
    report = json.loads((out / "validation-report.json").read_text())
    packs = {p["pluginName"]: p for p in report["pluginReports"]}
    assert {"AwsSolutions", "HIPAA.Security"} <= set(packs), sorted(packs)
    for pack in packs.values():
        assert pack["violations"] == [], pack["violations"][:3]
    for part, rules in REASONS.items():
        for rule, reason in rules.items():
            assert len(reason) >= 40, f"{part}: {rule}: reason too short"
    assert all(len(reason) >= 40 for _, reason in SPECIFIC_WILDCARDS)


def test_warm_pool_on_the_on_demand_group_and_none_on_spot(synthesized: tuple[Stage, Path]) -> None:
    stage, _ = synthesized
    fleet = template(synthesized, "gpu-default")
    pools = fleet.find_resources("AWS::AutoScaling::WarmPool")
    assert len(pools) == 1
    (pool,) = pools.values()
    fleet_stack = stage.fleets["default"]
    on_demand = fleet_stack.get_logical_id(fleet_stack.on_demand.node.default_child)  # type: ignore[arg-type]
    assert pool["Properties"]["AutoScalingGroupName"] == {"Ref": on_demand}
    assert pool["Properties"]["PoolState"] == "Stopped"
    groups = fleet.find_resources("AWS::AutoScaling::AutoScalingGroup")
    # AWS refuses a warm pool on a group with a mixed instances policy: the warm-pooled group
    # runs the launch template as it is (one instance type, On-Demand)
    assert "MixedInstancesPolicy" not in groups[on_demand]["Properties"]
    assert "LaunchTemplate" in groups[on_demand]["Properties"]
    (lt,) = fleet.find_resources("AWS::EC2::LaunchTemplate").values()
    assert lt["Properties"]["LaunchTemplateData"]["InstanceType"] == "g5.xlarge"
    assert "InstanceMarketOptions" not in lt["Properties"]["LaunchTemplateData"]
    (spot,) = [n for n in groups if n != on_demand]
    distribution = groups[spot]["Properties"]["MixedInstancesPolicy"]["InstancesDistribution"]
    assert distribution["OnDemandBaseCapacity"] == 0 and distribution["OnDemandPercentageAboveBaseCapacity"] == 0
    types = groups[spot]["Properties"]["MixedInstancesPolicy"]["LaunchTemplate"]["Overrides"]
    assert [t["InstanceType"] for t in types] == ["g5.xlarge", "g6.xlarge"]
    fleet.has_resource_properties(
        "AWS::EC2::LaunchTemplate",
        {"LaunchTemplateData": Match.object_like({"MetadataOptions": {"HttpTokens": "required"}})},
    )


def test_launch_template_user_data_starts_the_agent(synthesized: tuple[Stage, Path]) -> None:
    fleet = template(synthesized, "gpu-default")
    (lt,) = fleet.find_resources("AWS::EC2::LaunchTemplate").values()
    text = json.dumps(lt["Properties"]["LaunchTemplateData"]["UserData"])
    assert "docker run -d --name pixelfleet-agent" in text and "--runtime nvidia" in text
    assert "PIXELFLEET_AGENT__MATCHMAKER_URL" in text and "PIXELFLEET_AGENT__TENANT=default" in text
    # its own token from SSM, at every boot, by the instance id IMDSv2 gives; no secret read
    assert "aws ssm get-parameter" in text and "--with-decryption" in text and "secretsmanager" not in text
    assert "/pixelfleet/test/agent-tokens/default/$HOST_ID" in text and "meta-data/$1" in text
    assert "/var/lib/cloud/scripts/per-boot/pixelfleet-agent.sh" in text
    assert 'export PIXELFLEET_AGENT_TOKEN=\\"$AGENT_TOKEN\\"' in text  # off docker's command line
    assert "-e PIXELFLEET_AGENT_TOKEN -e" in text
    # the user data and the boot script it writes parse as bash (CloudFormation values as placeholders)
    _, parts = lt["Properties"]["LaunchTemplateData"]["UserData"]["Fn::Base64"]["Fn::Join"]
    script = "".join(part if isinstance(part, str) else "x" for part in parts)
    body = script.split("<<'PIXELFLEET_EOF'\n", 1)[1].split("\nPIXELFLEET_EOF\n", 1)[0]
    for source in (script, body):
        subprocess.run(["bash", "-n"], input=source, text=True, check=True)


def test_nlb_idle_timeout_and_drain(synthesized: tuple[Stage, Path]) -> None:
    control = template(synthesized, "control")
    listeners = control.find_resources("AWS::ElasticLoadBalancingV2::Listener")
    assert sorted(l_["Properties"]["Port"] for l_ in listeners.values()) == [80, 8888, 9999]
    for listener in listeners.values():
        assert listener["Properties"]["Protocol"] == "TCP"
        assert {"Key": "tcp.idle_timeout.seconds", "Value": str(STAGE.nlb_idle_timeout_s)} in listener["Properties"][
            "ListenerAttributes"
        ]
    groups = control.find_resources("AWS::ElasticLoadBalancingV2::TargetGroup")
    assert len(groups) == 6  # blue and green per listener
    for group in groups.values():
        attrs = {a["Key"]: a["Value"] for a in group["Properties"]["TargetGroupAttributes"]}
        assert attrs["deregistration_delay.timeout_seconds"] == str(STAGE.drain_s)


def test_global_accelerator_listens_on_the_nlb_ports(synthesized: tuple[Stage, Path]) -> None:
    control = template(synthesized, "control")
    (listener,) = control.find_resources("AWS::GlobalAccelerator::Listener").values()
    ports = sorted((r["FromPort"], r["ToPort"]) for r in listener["Properties"]["PortRanges"])
    assert ports == [(80, 80), (8888, 8888), (9999, 9999)]
    assert listener["Properties"]["Protocol"] == "TCP"
    control.resource_count_is("AWS::GlobalAccelerator::EndpointGroup", 1)


def test_services_deploy_blue_green(synthesized: tuple[Stage, Path]) -> None:
    control = template(synthesized, "control")
    services = control.find_resources("AWS::ECS::Service")
    assert len(services) == 2
    for service in services.values():
        assert service["Properties"]["DeploymentConfiguration"]["Strategy"] == "BLUE_GREEN"
        for lb in service["Properties"]["LoadBalancers"]:
            assert "AlternateTargetGroupArn" in lb["AdvancedConfiguration"]


def test_turn_security_group_opens_the_relay_ports(synthesized: tuple[Stage, Path]) -> None:
    turn = template(synthesized, "turn")
    (group,) = turn.find_resources("AWS::EC2::SecurityGroup").values()
    rules = {(r["IpProtocol"], r["FromPort"], r["ToPort"]) for r in group["Properties"]["SecurityGroupIngress"]}
    assert ("udp", STAGE.turn_relay_min_port, STAGE.turn_relay_max_port) in rules
    assert {("udp", 3478, 3478), ("tcp", 3478, 3478), ("tcp", 5349, 5349)} <= rules
    egress = {(r["IpProtocol"], r.get("FromPort"), r.get("ToPort")) for r in group["Properties"]["SecurityGroupEgress"]}
    assert ("udp", STAGE.turn_relay_min_port, STAGE.turn_relay_max_port) in egress


def test_turn_relays_keep_their_addresses_and_run_their_image(synthesized: tuple[Stage, Path]) -> None:
    """One Elastic IP and one single-instance group per relay; the boot script takes the address,
    installs Docker (Amazon Linux 2023 has none) and then runs coturn announcing that address;
    the relays' AMI and the pipeline's coturn build are the same architecture."""
    turn = template(synthesized, "turn")
    eips = turn.find_resources("AWS::EC2::EIP")
    groups = turn.find_resources("AWS::AutoScaling::AutoScalingGroup")
    assert len(eips) == len(groups) == STAGE.turn_hosts
    assert all(g["Properties"]["MinSize"] == g["Properties"]["MaxSize"] == "1" for g in groups.values())
    templates = turn.find_resources("AWS::EC2::LaunchTemplate")
    used: set[str] = set()
    for lt in templates.values():
        data = lt["Properties"]["LaunchTemplateData"]
        _, parts = data["UserData"]["Fn::Base64"]["Fn::Join"]
        (eip,) = {p["Fn::GetAtt"][0] for p in parts if isinstance(p, dict) and "Fn::GetAtt" in p}
        used.add(eip)
        assert {"Ref": eip} in parts  # coturn announces the address it took
        script = "".join(part if isinstance(part, str) else "x" for part in parts)
        steps = [script.index(s) for s in ("aws ec2 associate-address", "dnf install -y docker", "docker run -d")]
        assert steps == sorted(steps), script
        assert "systemctl enable --now docker" in script and "--allow-reassociation" in script
        subprocess.run(["bash", "-n"], input=script, text=True, check=True)
        ami = turn.to_json()["Parameters"][data["ImageId"]["Ref"]]["Default"]
        assert ami.startswith("/aws/service/ami-amazon-linux-latest/al2023") and ami.endswith("-arm64"), ami
    assert used == set(eips)
    pipe = template(synthesized, "pipeline")
    archs: dict[str, str] = {}
    for project in pipe.find_resources("AWS::CodeBuild::Project").values():
        spec = json.dumps(project["Properties"]["Source"]["BuildSpec"])
        for image in ("control-plane", "agent", "coturn"):
            if f"deploy/docker/{image}.Dockerfile" in spec:
                archs[image] = project["Properties"]["Environment"]["Type"]
    assert archs == {"control-plane": "LINUX_CONTAINER", "agent": "LINUX_CONTAINER", "coturn": "ARM_CONTAINER"}
    with pytest.raises(ConfigError, match="Graviton"):
        StageConfig(turn_instance_type="c6in.large")


def _statements(t: Template) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for policy in t.find_resources("AWS::IAM::Policy").values():
        out += policy["Properties"]["PolicyDocument"]["Statement"]
    return out


@pytest.mark.parametrize("part", ["control", "gpu-default", "turn", "autoscale"])
def test_runtime_roles_name_every_action(synthesized: tuple[Stage, Path], part: str) -> None:
    """Tasks and hosts touch player data: no wildcard action in any of their statements, and
    no AWS-managed policy on a host role (AmazonSSMManagedInstanceCore allows ssm:GetParameter
    on every parameter: every other host's agent token)."""
    t = template(synthesized, part)
    for statement in _statements(t):
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        assert not [a for a in actions if "*" in a], statement
        if statement["Resource"] == "*":
            # the agent-token function's network interfaces in the VPC (its own role, below),
            # and the SSM agent's Session Manager channel
            allowed = {
                "ecr:GetAuthorizationToken",
                "cloudwatch:PutMetricData",
                *VPC_ENI_ACTIONS,
                *SESSION_MANAGER_ACTIONS,
                *DESCRIBE_ACTIONS,  # the autoscaler's describe calls: no resource-level permissions
            }
            assert set(actions) <= allowed, statement
    ec2_roles = [
        (name, role)
        for name, role in t.find_resources("AWS::IAM::Role").items()
        if "ec2.amazonaws.com" in json.dumps(role["Properties"]["AssumeRolePolicyDocument"])
    ]
    assert ec2_roles or part in ("control", "autoscale")
    for name, role in ec2_roles:
        assert "ManagedPolicyArns" not in role["Properties"], (name, role["Properties"]["ManagedPolicyArns"])
    assert not t.find_resources("AWS::IAM::ManagedPolicy")
    assert not [s for s in _statements(t) if "ssm:GetParameter" in json.dumps(s["Action"]) and s["Resource"] == "*"]


def test_redis_is_cluster_mode_with_tls_and_auth(synthesized: tuple[Stage, Path]) -> None:
    data = template(synthesized, "data")
    data.has_resource_properties(
        "AWS::ElastiCache::ReplicationGroup",
        {
            "ClusterMode": "enabled",
            "TransitEncryptionEnabled": True,
            "TransitEncryptionMode": "required",
            "AtRestEncryptionEnabled": True,
            "AutomaticFailoverEnabled": True,
        },
    )
    (redis,) = data.find_resources("AWS::ElastiCache::ReplicationGroup").values()
    assert "{{resolve:secretsmanager:" in json.dumps(redis["Properties"]["AuthToken"])
    data.has_resource_properties(
        "AWS::DynamoDB::GlobalTable", {"TimeToLiveSpecification": {"AttributeName": "expires_at", "Enabled": True}}
    )


def test_alarms_cover_ready_slots_queue_errors_and_gpu(synthesized: tuple[Stage, Path]) -> None:
    obs = template(synthesized, "observability")
    alarms = obs.find_resources("AWS::CloudWatch::Alarm").values()
    read = {a["Properties"].get("MetricName") or a["Properties"]["Metrics"][0]["Expression"] for a in alarms}
    for needed in ("FreeSlots", "PlayersQueued", "TCP_Target_Reset_Count", "GpuUtilization", "EncoderUtilization"):
        assert any(needed in r for r in read), (needed, read)
    obs.resource_count_is("AWS::CloudWatch::Dashboard", 1)


_QUERY = re.compile(
    r"SELECT (?P<fn>SUM|MAX|MIN|AVG)\((?P<name>\w+)\) FROM SCHEMA\(\"(?P<ns>\w+)\", (?P<dims>[\w, ]+)\)"
    r"(?: WHERE App = '(?P<app>[^']+)')?"
)


def test_every_alarm_reads_a_metric_as_it_is_published(synthesized: tuple[Stage, Path]) -> None:
    """CloudWatch adds nothing up across dimensions: an alarm on an agent metric must name the
    exact dimension set the agent publishes it with (gpu_agent.cloudwatch.metric_data, run on
    a recorded NVML sample), and one on a log-derived metric what its metric filter emits."""
    from gpu_agent.cloudwatch import metric_data
    from tests.unit.test_gpu_agent_parts import fake_agent

    published: dict[str, set[frozenset[str]]] = {}
    for datum in metric_data(fake_agent()):
        published.setdefault(datum["MetricName"], set()).add(frozenset(d["Name"] for d in datum["Dimensions"]))
    obs = template(synthesized, "observability")
    filters = {
        (t["MetricNamespace"], t["MetricName"]): t.get("Dimensions", [])
        for f in obs.find_resources("AWS::Logs::MetricFilter").values()
        for t in f["Properties"]["MetricTransformations"]
    }
    apps = {pool.app for pool in STAGE.pools}
    checked = 0
    for name, alarm in obs.find_resources("AWS::CloudWatch::Alarm").items():
        props = alarm["Properties"]
        if "Metrics" in props:
            (query,) = [m["Expression"] for m in props["Metrics"] if m.get("ReturnData", True)]
            m = _QUERY.fullmatch(query)
            assert m is not None and m["ns"] == "Pixelfleet", (name, query)
            dims = frozenset(d.strip() for d in m["dims"].split(","))
            assert dims in published.get(m["name"], set()), (name, m["name"], sorted(dims), published.get(m["name"]))
            assert m["app"] is None or m["app"] in apps, (name, m["app"])
            checked += 1
        elif props["Namespace"] == "Pixelfleet":
            dims = frozenset(d["Name"] for d in props.get("Dimensions", []))
            assert props["MetricName"] not in published, f"{name}: an agent metric read without its dimensions"
            assert ("Pixelfleet", props["MetricName"]) in filters, f"{name}: nothing publishes {props['MetricName']}"
            assert dims == frozenset(d["Key"] for d in filters[("Pixelfleet", props["MetricName"])]), name
            checked += 1
        else:
            assert props["Namespace"].startswith("AWS/") and props["Dimensions"], name
    assert checked >= 4
    # one READY-slots alarm per pool's app, each on that app's hosts
    no_ready = [
        a["Properties"]["Metrics"][0]["Expression"]
        for k, a in obs.find_resources("AWS::CloudWatch::Alarm").items()
        if k.startswith("NoReadySlots")
    ]
    assert sorted(_QUERY.fullmatch(q)["app"] for q in no_ready) == sorted(apps)  # type: ignore[index]


def test_pipeline_builds_images_and_deploys_both_services(synthesized: tuple[Stage, Path]) -> None:
    pipe = template(synthesized, "pipeline")
    (pipeline,) = pipe.find_resources("AWS::CodePipeline::Pipeline").values()
    stages = {
        s["Name"]: [a["ActionTypeId"]["Provider"] for a in s["Actions"]] for s in pipeline["Properties"]["Stages"]
    }
    # x86 images, coturn (Arm); no UE build without a UE build image (it could only fail)
    assert stages["Build"] == ["CodeBuild", "CodeBuild"]
    assert stages["Deploy"] == ["CodeBuild"]
    projects = pipe.find_resources("AWS::CodeBuild::Project")
    assert any(p["Properties"]["Environment"].get("PrivilegedMode") for p in projects.values())
    # the Images action exports the tag it pushed; Deploy runs cdk deploy --all with it
    (build,) = [s for s in pipeline["Properties"]["Stages"] if s["Name"] == "Build"]
    (images,) = [a for a in build["Actions"] if a["Name"] == "Images"]
    assert images["Namespace"] == "Images"
    specs = {
        name: json.loads(
            "".join(x if isinstance(x, str) else "x" for x in p["Properties"]["Source"]["BuildSpec"]["Fn::Join"][1])
            if isinstance(p["Properties"]["Source"]["BuildSpec"], dict)
            else p["Properties"]["Source"]["BuildSpec"]
        )
        for name, p in projects.items()
    }
    image_specs = [spec for spec in specs.values() if "docker push" in json.dumps(spec)]
    # boto3 (the `aws` extra) in the control plane's image: the records table and the autoscaler
    builds = [c for spec in image_specs for c in spec["phases"]["build"]["commands"]]
    assert [c for c in builds if "control-plane.Dockerfile --build-arg EXTRAS=aws " in c], builds
    assert len(image_specs) == 2 and all(spec["env"]["exported-variables"] == ["TAG"] for spec in image_specs)
    (deploy_stage,) = [s for s in pipeline["Properties"]["Stages"] if s["Name"] == "Deploy"]
    (deploy,) = deploy_stage["Actions"]
    variables = json.loads(deploy["Configuration"]["EnvironmentVariables"])
    assert {"name": "IMAGE_TAG", "type": "PLAINTEXT", "value": "#{Images.TAG}"} in variables
    (deploy_spec,) = [spec for spec in specs.values() if "cdk deploy" in json.dumps(spec)]
    assert 'cdk deploy --all --require-approval never -c stage=test -c imageTag="$IMAGE_TAG"' in " ".join(
        deploy_spec["phases"]["build"]["commands"]
    )
    # the deploy project assumes the four roles `cdk bootstrap` made in this account and region, by name
    assumes = [
        st["Resource"]
        for policy in pipe.find_resources("AWS::IAM::Policy").values()
        for st in policy["Properties"]["PolicyDocument"]["Statement"]
        if st["Action"] == "sts:AssumeRole" and "cdk-hnb659fds" in json.dumps(st["Resource"])
    ]
    (resources,) = assumes
    names = sorted(r["Fn::Join"][1][-1].rsplit("/", 1)[1] for r in resources)
    assert names == [
        f"cdk-hnb659fds-{kind}-role-123456789012-us-east-1"
        for kind in ("deploy", "file-publishing", "image-publishing", "lookup")
    ]
    # and no ECS deploy action against a stack the first deploy has not made yet
    assert "Fn::ImportValue" not in json.dumps(pipeline["Properties"]["Stages"])


def test_stage_context_is_checked() -> None:
    cdk_json = json.loads((ROOT / "deploy" / "cdk" / "cdk.json").read_text())
    for name in cdk_json["context"]["pixelfleet:stages"]:
        assert stage_from_context(cdk_json["context"]["pixelfleet:stages"], name).name == name
    with pytest.raises(ConfigError, match="unknown keys"):
        stage_from_context({"x": {"warm_pool": 2}}, "x")
    with pytest.raises(ConfigError, match="not a g5/g6/g6e type"):
        stage_from_context({"x": {"pools": [{"instance_types": ["m5.large"]}]}}, "x")
    with pytest.raises(ConfigError, match="expected int"):
        stage_from_context({"x": {"redis_shards": "2"}}, "x")
    with pytest.raises(ConfigError, match="not in context"):
        stage_from_context({}, "prod")
    with pytest.raises(ConfigError, match="nothing pushes 'latest'"):
        StageConfig(image_tag="latest")
    with pytest.raises(ConfigError, match="imageTag"):
        build_stage(new_app(), StageConfig())


def test_a_stage_may_have_claims_confirmed_by_replicas_and_keep_writing_through_a_failover(
    synthesized: tuple[Stage, Path],
) -> None:
    """``redis_wait_replicas`` reaches the matchmaker as REDIS_WAIT_REPLICAS, below the
    replicas per shard (a shard that failed over has one less until it is replaced)."""
    control = template(synthesized, "control")
    tasks = [t["Properties"] for t in control.find_resources("AWS::ECS::TaskDefinition").values()]
    (task,) = [t for t in tasks if t["ContainerDefinitions"][0]["Command"][0] == "matchmaker"]
    names = {e["Name"] for e in task["ContainerDefinitions"][0]["Environment"]}
    assert "PIXELFLEET_MATCHMAKER__REDIS_WAIT_REPLICAS" not in names  # 0 by default: not waited for
    waiting = StageConfig(redis_replicas_per_shard=2, redis_wait_replicas=1)
    assert matchmaker_environment(waiting, "t")["PIXELFLEET_MATCHMAKER__REDIS_WAIT_REPLICAS"] == "1"
    with pytest.raises(ConfigError, match="redis_wait_replicas 1: 0..redis_replicas_per_shard - 1"):
        StageConfig(redis_wait_replicas=1)


def test_first_deploy_is_network_data_and_pipeline(tmp_path: Path) -> None:
    """Before any image exists (no imageTag): only the stacks that need none, nag-clean."""
    app = new_app(str(tmp_path))
    boot = build_bootstrap(app, StageConfig(name="first"), ENV)
    app.synth()
    assert sorted(s.stack_name for s in boot.stacks()) == [
        "pixelfleet-first-data",
        "pixelfleet-first-network",
        "pixelfleet-first-pipeline",
    ]
    assert sorted(p.name for p in tmp_path.glob("*.template.json")) == [
        f"{s}.template.json" for s in sorted(s.stack_name for s in boot.stacks())
    ]
    report = json.loads((tmp_path / "validation-report.json").read_text())
    assert all(pack["violations"] == [] for pack in report["pluginReports"])


def test_docs_show_the_idle_cost_of_the_default_stage(
    synthesized: tuple[Stage, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    table = markdown_table(idle_cost(StageConfig()))
    assert table in (ROOT / "docs" / "deploy.md").read_text()
    assert cost_main([]) == 0 and capsys.readouterr().out.strip() == table  # the command docs/deploy.md names
    # the public IPv4 addresses it bills: one per coturn relay, per NAT gateway and per zone of the NLB
    (nlb,) = template(synthesized, "control").find_resources("AWS::ElasticLoadBalancingV2::LoadBalancer").values()
    assert nlb["Properties"]["Scheme"] == "internet-facing" and len(nlb["Properties"]["Subnets"]) == STAGE.max_azs
    network = template(synthesized, "network")
    assert len(network.find_resources("AWS::EC2::NatGateway")) == STAGE.nat_gateways
    assert len(template(synthesized, "turn").find_resources("AWS::EC2::EIP")) == STAGE.turn_hosts
    (ips,) = [line for line in idle_cost(STAGE) if line.item == "public IPv4 addresses"]
    assert ips.usd_per_hour == (STAGE.turn_hosts + STAGE.nat_gateways + STAGE.max_azs) * 0.005
    total = idle_cost(StageConfig())[-1]
    assert total.item == "total" and f"{total.usd_per_hour:.2f}" in (ROOT / "README.md").read_text()


def _container_secrets(control: Template, command: str) -> dict[str, Any]:
    """The ``Secrets`` of the task whose container runs ``command``, by variable name."""
    for task in control.find_resources("AWS::ECS::TaskDefinition").values():
        (container,) = task["Properties"]["ContainerDefinitions"]
        if container["Command"][0] == command:
            return {s["Name"]: s["ValueFrom"] for s in container["Secrets"]}
    raise AssertionError(f"no task runs {command}")


def test_services_get_the_keys_that_close_their_doors(synthesized: tuple[Stage, Path]) -> None:
    """Signalling and the matchmaker share the session-token key (session tokens and streamer
    credentials) and the report token, each from its Secrets Manager secret; signalling gets
    no agent or admin token."""
    stage, _ = synthesized
    control = template(synthesized, "control")
    signaling, matchmaker = _container_secrets(control, "signaling"), _container_secrets(control, "matchmaker")
    data = stage.data
    secret_ids = {
        "PIXELFLEET_SESSION_TOKEN_SECRET": data.get_logical_id(data.session_token_secret.node.default_child),  # type: ignore[arg-type]
        "PIXELFLEET_REPORT_TOKEN": data.get_logical_id(data.report_token.node.default_child),  # type: ignore[arg-type]
    }
    for name, logical_id in secret_ids.items():
        for secrets in (signaling, matchmaker):
            assert logical_id in json.dumps(secrets[name]), (name, secrets[name])
    assert signaling["PIXELFLEET_REPORT_TOKEN"] == matchmaker["PIXELFLEET_REPORT_TOKEN"]
    # per-host agent tokens: the matchmaker gets the key that checks them, no fleet-wide agent token
    assert {"PIXELFLEET_MATCHMAKER__AGENT_KEY_SECRET", "PIXELFLEET_ADMIN_TOKEN"} <= set(matchmaker)
    assert "PIXELFLEET_AGENT_TOKEN" not in matchmaker
    assert data.get_logical_id(data.agent_key.node.default_child) in json.dumps(  # type: ignore[arg-type]
        matchmaker["PIXELFLEET_MATCHMAKER__AGENT_KEY_SECRET"]
    )
    assert not {"PIXELFLEET_AGENT_TOKEN", "PIXELFLEET_MATCHMAKER__AGENT_KEY_SECRET", "PIXELFLEET_ADMIN_TOKEN"} & set(
        signaling
    )
    data_template = template(synthesized, "data")
    data_template.has_resource_properties(
        "AWS::SecretsManager::Secret",
        {"Description": Match.string_like_regexp("PIXELFLEET_REPORT_TOKEN"), "GenerateSecretString": Match.any_value()},
    )


def _logical_id(stack: Any, construct: Any) -> str:
    return str(stack.get_logical_id(construct.node.default_child))


def test_both_gpu_groups_carry_the_token_hooks_and_wait_for_the_function(synthesized: tuple[Stage, Path]) -> None:
    """Launch and terminate hooks on the On-Demand (warm pool) and the Spot group, declared on the
    groups so the hosts a new group launches wait too; the groups depend on the function and its
    rule, which take both groups' lifecycle events and nothing else."""
    stage, _ = synthesized
    fleet, stack = template(synthesized, "gpu-default"), stage.fleets["default"]
    groups = fleet.find_resources("AWS::AutoScaling::AutoScalingGroup")
    names = {"pixelfleet-test-default-on-demand", "pixelfleet-test-default-spot"}
    assert {g["Properties"]["AutoScalingGroupName"] for g in groups.values()} == names
    function_id = _logical_id(stack, stack.tokens.function)
    for group in groups.values():
        hooks = {h["LifecycleHookName"]: h for h in group["Properties"]["LifecycleHookSpecificationList"]}
        assert hooks[LAUNCH_HOOK]["LifecycleTransition"] == "autoscaling:EC2_INSTANCE_LAUNCHING"
        assert hooks[LAUNCH_HOOK]["DefaultResult"] == "ABANDON"  # no token, no host
        assert hooks[TERMINATE_HOOK]["LifecycleTransition"] == "autoscaling:EC2_INSTANCE_TERMINATING"
        assert hooks[TERMINATE_HOOK]["DefaultResult"] == "CONTINUE"
        assert all("NotificationTargetARN" not in h for h in hooks.values())  # to EventBridge
        assert function_id in group["DependsOn"]
    fleet.resource_count_is("AWS::AutoScaling::LifecycleHook", 0)
    (rule,) = fleet.find_resources("AWS::Events::Rule").values()
    pattern = rule["Properties"]["EventPattern"]
    assert pattern["source"] == ["aws.autoscaling"]
    assert set(pattern["detail"]["AutoScalingGroupName"]) == names
    assert set(pattern["detail"]["LifecycleHookName"]) == {LAUNCH_HOOK, TERMINATE_HOOK}
    (target,) = rule["Properties"]["Targets"]
    assert target["Arn"] == {"Fn::GetAtt": [function_id, "Arn"]} and "DeadLetterConfig" in target


def test_token_function_is_least_privilege_in_the_vpc_with_a_dead_letter_queue(
    synthesized: tuple[Stage, Path],
) -> None:
    stage, _ = synthesized
    fleet, stack = template(synthesized, "gpu-default"), stage.fleets["default"]
    (fn,) = fleet.find_resources("AWS::Lambda::Function").values()
    props = fn["Properties"]
    assert props["Runtime"].startswith("python3") and props["Handler"] == "handler.handler"
    assert props["ReservedConcurrentExecutions"] >= 1 and "DeadLetterConfig" in props
    assert props["VpcConfig"]["SubnetIds"] and props["VpcConfig"]["SecurityGroupIds"]
    env = props["Environment"]["Variables"]
    assert env["PARAMETER_PATH"] == "/pixelfleet/test/agent-tokens/default" and env["TENANTS"] == "default"
    assert env["GROUP_NAMES"] == "pixelfleet-test-default-on-demand,pixelfleet-test-default-spot"
    assert "AgentKey" in json.dumps(env["AGENT_KEY_SECRET_ARN"])
    role_id = _logical_id(stack, stack.tokens.role)
    assert props["Role"] == {"Fn::GetAtt": [role_id, "Arn"]}
    (role,) = [r for k, r in fleet.find_resources("AWS::IAM::Role").items() if k == role_id]
    assert "ManagedPolicyArns" not in role["Properties"]  # no AWS-managed policy: logs on every group
    (policy,) = [
        p for p in fleet.find_resources("AWS::IAM::Policy").values() if p["Properties"]["Roles"] == [{"Ref": role_id}]
    ]
    granted: dict[str, str] = {}
    for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        for action in actions:
            granted[action] = json.dumps(statement["Resource"])
    assert set(granted) == {
        "secretsmanager:GetSecretValue",
        "ssm:PutParameter",
        "ssm:AddTagsToResource",
        "ssm:DeleteParameter",
        "kms:Encrypt",
        "autoscaling:CompleteLifecycleAction",
        "logs:CreateLogStream",
        "logs:PutLogEvents",
        "sqs:SendMessage",
        *VPC_ENI_ACTIONS,
    }
    assert "AgentKey" in granted["secretsmanager:GetSecretValue"]
    for action in ("ssm:PutParameter", "ssm:AddTagsToResource", "ssm:DeleteParameter"):
        assert granted[action].endswith(':parameter/pixelfleet/test/agent-tokens/default/*"]]}'), granted[action]
    for name in ("pixelfleet-test-default-on-demand", "pixelfleet-test-default-spot"):
        assert f"autoScalingGroupName/{name}" in granted["autoscaling:CompleteLifecycleAction"]
    assert all(granted[a] == '"*"' for a in VPC_ENI_ACTIONS)
    assert [r for r in granted.values() if r == '"*"'] == ['"*"'] * len(VPC_ENI_ACTIONS)


def test_hosts_read_their_own_token_and_no_secret(synthesized: tuple[Stage, Path]) -> None:
    """The instance role may get a parameter of its pool's path only when its tag names the caller's
    own instance, and reads no Secrets Manager secret: neither the agent key nor a fleet token."""
    stage, _ = synthesized
    fleet, stack = template(synthesized, "gpu-default"), stage.fleets["default"]
    role_id = _logical_id(stack, stack.role)
    (policy,) = [
        p for p in fleet.find_resources("AWS::IAM::Policy").values() if p["Properties"]["Roles"] == [{"Ref": role_id}]
    ]
    statements = policy["Properties"]["PolicyDocument"]["Statement"]
    assert not [s for s in statements if "secretsmanager" in json.dumps(s["Action"])]
    reads = [s for s in statements if "ssm:GetParameter" in json.dumps(s["Action"])]
    (ssm,) = [s for s in reads if s["Effect"] == "Allow"]
    assert ssm["Action"] == "ssm:GetParameter"
    assert json.dumps(ssm["Resource"]).endswith(':parameter/pixelfleet/test/agent-tokens/default/*"]]}')
    own = {"aws:ResourceTag/pixelfleet:instance-arn": "${ec2:SourceInstanceARN}"}
    assert ssm["Condition"] == {"StringEquals": own}
    # and an explicit Deny of every read of another host's token, whatever else the role gets
    (deny,) = [s for s in reads if s["Effect"] == "Deny"]
    assert set(deny["Action"]) == set(PARAMETER_READS) and deny["Condition"] == {"StringNotEquals": own}
    assert json.dumps(deny["Resource"]).count("agent-tokens/default") == 2  # the path and what is under it
    (kms,) = [s for s in statements if "kms:Decrypt" in json.dumps(s["Action"])]
    assert set(kms["Condition"]["StringEquals"]["kms:ViaService"]) == {
        "ssm.us-east-1.amazonaws.com",
        "s3.us-east-1.amazonaws.com",
    }


def test_only_the_matchmaker_and_the_token_functions_read_the_agent_key(synthesized: tuple[Stage, Path]) -> None:
    stage, out = synthesized
    key_id = stage.data.get_logical_id(stage.data.agent_key.node.default_child)  # type: ignore[arg-type]
    readers: list[tuple[str, str]] = []
    for path in sorted(out.glob("pixelfleet-test-*.template.json")):
        t = Template.from_json(json.loads(path.read_text()))
        for name, policy in t.find_resources("AWS::IAM::Policy").items():
            for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
                if key_id in json.dumps(statement["Resource"]):
                    readers.append((path.name.split(".")[0].removeprefix("pixelfleet-test-"), name))
    parts = sorted({part for part, _ in readers})
    assert parts == ["control", "gpu-default"], readers
    control_readers = {name for part, name in readers if part == "control"}
    assert len(control_readers) == 1 and "Matchmaker" in next(iter(control_readers)), control_readers
    stack = stage.fleets["default"]
    assert {name for part, name in readers if part == "gpu-default"} == {
        _logical_id(stack, stack.tokens.role.node.find_child("DefaultPolicy"))
    }


def test_the_matchmaker_writes_session_records_to_the_table_and_nothing_else_may(
    synthesized: tuple[Stage, Path],
) -> None:
    """Records go to the table (a task's memory goes with each deploy), under the matchmaker
    task's role, which may write items of that one table and read none; no other role may."""
    stage, out = synthesized
    control = template(synthesized, "control")
    table_id = _logical_id(stage.data, stage.data.sessions)
    tasks = [t["Properties"] for t in control.find_resources("AWS::ECS::TaskDefinition").values()]
    (task,) = [t for t in tasks if t["ContainerDefinitions"][0]["Command"][0] == "matchmaker"]
    env = {e["Name"]: e["Value"] for e in task["ContainerDefinitions"][0]["Environment"]}
    assert table_id in json.dumps(env["PIXELFLEET_MATCHMAKER__RECORDS_TABLE"])
    writes = [
        (p["Properties"]["Roles"], st)
        for part in out.glob("pixelfleet-test-*.template.json")
        for p in Template.from_json(json.loads(part.read_text())).find_resources("AWS::IAM::Policy").values()
        for st in p["Properties"]["PolicyDocument"]["Statement"]
        if "dynamodb:" in json.dumps(st["Action"])
    ]
    ((roles, statement),) = writes
    assert roles == [{"Ref": task["TaskRoleArn"]["Fn::GetAtt"][0]}]
    assert sorted(statement["Action"]) == ["dynamodb:BatchWriteItem", "dynamodb:PutItem"]
    assert table_id in json.dumps(statement["Resource"]) and "*" not in json.dumps(statement["Resource"])
