"""The pools' autoscalers in the CDK app (deploy/cdk/pixelfleet_deploy/autoscaler.py), for a
stage of two pools: one Fargate service of one task (never two at once), one container per
pool with that pool's two group names and its own notice queue, an EventBridge rule per
queue for both notice kinds, and a task role that may change only the pools' groups and
read only their queues. cdk-nag reports nothing unacknowledged for the stage.
(tests/unit/test_deploy_runtime_config.py runs the containers' start script and loader.)"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

os.environ.setdefault("JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION", "1")

from aws_cdk import Environment  # noqa: E402
from aws_cdk.assertions import Match, Template  # noqa: E402
from pixelfleet_deploy.autoscaler import (  # noqa: E402
    CONFIG_VARIABLE,
    DESCRIBE_ACTIONS,
    GROUP_ACTIONS,
    NOTICE_DETAIL_TYPES,
    QUEUE_ACTIONS,
)
from pixelfleet_deploy.config import GpuPool, StageConfig  # noqa: E402
from pixelfleet_deploy.stage import Stage, build_stage, new_app  # noqa: E402

from autoscale.run import AwsAutoscaleConfig  # noqa: E402

POOLS = (GpuPool(name="game", app="game", tenant="acme"), GpuPool(name="demo", app="demo", spot_max=4))
STAGE = StageConfig(name="test", image_tag="0123456789ab", pools=POOLS)
ENV = Environment(account="123456789012", region="us-east-1")


@pytest.fixture(scope="module")
def synthesized(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stage, Template, Path]]:
    out = tmp_path_factory.mktemp("cdk.out")
    app = new_app(str(out))
    stage = build_stage(app, STAGE, ENV)
    app.synth()  # raises on any unacknowledged cdk-nag finding
    raw = json.loads((out / "pixelfleet-test-autoscale.template.json").read_text())
    yield stage, Template.from_json(raw), out


def _text(value: Any) -> str:
    """A CloudFormation string with each intrinsic spelt as its JSON (for matching names)."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and "Fn::Join" in value:
        sep, parts = value["Fn::Join"]
        return str(sep).join(_text(p) for p in parts)
    return json.dumps(value)


def test_nag_is_clean_and_the_stack_comes_after_the_pools(synthesized: tuple[Stage, Template, Path]) -> None:
    stage, _, out = synthesized
    report = json.loads((out / "validation-report.json").read_text())
    for pack in report["pluginReports"]:
        assert pack["violations"] == [], pack["violations"][:3]
    deps = {d.stack_name for d in stage.autoscaler.dependencies}
    assert {"pixelfleet-test-gpu-game", "pixelfleet-test-gpu-demo", "pixelfleet-test-control"} <= deps


def test_one_task_one_container_per_pool_never_two_tasks(synthesized: tuple[Stage, Template, Path]) -> None:
    _, t, _ = synthesized
    t.resource_count_is("AWS::ECS::Service", 1)
    t.has_resource_properties(
        "AWS::ECS::Service",
        {
            "DesiredCount": 1,
            "LaunchType": "FARGATE",
            "DeploymentConfiguration": Match.object_like({"MinimumHealthyPercent": 0, "MaximumPercent": 100}),
        },
    )
    (task,) = t.find_resources("AWS::ECS::TaskDefinition").values()
    containers = task["Properties"]["ContainerDefinitions"]
    assert [c["Name"] for c in containers] == ["autoscale-game", "autoscale-demo"]
    queues = list(t.find_resources("AWS::SQS::Queue"))
    assert len(queues) == 2
    seen_queues = set()
    for pool, container in zip(POOLS, containers, strict=True):
        assert container["EntryPoint"] == ["/bin/sh", "-c"]
        assert "exec pixelfleet autoscale --matchmaker" in container["Command"][0]
        assert container["ReadonlyRootFilesystem"] is True and container["User"] == "10001"
        assert "MountPoints" not in container  # the config reaches it on a pipe, not a volume
        env = {e["Name"]: e["Value"] for e in container["Environment"]}
        (queue_ref,) = [p for p in env[CONFIG_VARIABLE]["Fn::Join"][1] if isinstance(p, dict)]
        seen_queues.add(queue_ref["Ref"])
        text = _text(env[CONFIG_VARIABLE]).replace(json.dumps(queue_ref), "https://sqs.example/q")
        config = json.loads(text)
        assert config["aws"]["on_demand_group"] == f"pixelfleet-test-{pool.name}-on-demand"
        assert config["aws"]["spot_group"] == f"pixelfleet-test-{pool.name}-spot"
        assert config["aws"]["warm_pool_min"] == pool.warm_pool_size
        assert config["aws"]["on_demand_ceiling"] == pool.on_demand_max  # CloudFormation owns MaxSize
        assert (config["tenant"], config["app"]) == (pool.tenant, pool.app)
        assert config["policy"] == {
            "min_hosts": pool.on_demand_min,
            "max_hosts": pool.on_demand_max + pool.spot_max,
            "slots_per_host": pool.slots_per_host,
        }
        msgspec.json.decode(text, type=AwsAutoscaleConfig)  # the autoscaler's own type
    assert seen_queues == set(queues)  # each pool reads its own queue


def test_notices_reach_every_pools_queue(synthesized: tuple[Stage, Template, Path]) -> None:
    _, t, _ = synthesized
    rules = t.find_resources("AWS::Events::Rule")
    assert len(rules) == 2
    targets = set()
    for rule in rules.values():
        props = rule["Properties"]
        assert props["EventPattern"] == {"source": ["aws.ec2"], "detail-type": list(NOTICE_DETAIL_TYPES)}
        ((target,),) = [props["Targets"]]
        targets.add(target["Arn"]["Fn::GetAtt"][0])
    assert targets == set(t.find_resources("AWS::SQS::Queue"))
    for queue in t.find_resources("AWS::SQS::Queue").values():
        assert queue["Properties"]["SqsManagedSseEnabled"] is True
    # EventBridge may send to each queue, only from that queue's rule; TLS only
    rule_of = {t_["Arn"]["Fn::GetAtt"][0]: name for name, r in rules.items() for t_ in r["Properties"]["Targets"]}
    policies = t.find_resources("AWS::SQS::QueuePolicy").values()
    assert len(policies) == 2
    for policy in policies:
        statements = policy["Properties"]["PolicyDocument"]["Statement"]
        (send,) = [s for s in statements if s["Effect"] == "Allow"]
        queue = send["Resource"]["Fn::GetAtt"][0]
        assert "sqs:SendMessage" in send["Action"] and send["Principal"] == {"Service": "events.amazonaws.com"}
        assert send["Condition"] == {"ArnEquals": {"aws:SourceArn": {"Fn::GetAtt": [rule_of[queue], "Arn"]}}}
        (deny,) = [s for s in statements if s["Effect"] == "Deny"]
        assert deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}


def test_the_task_role_changes_only_the_pools_groups_and_reads_only_their_queues(
    synthesized: tuple[Stage, Template, Path],
) -> None:
    _, t, out = synthesized
    (task,) = t.find_resources("AWS::ECS::TaskDefinition").values()
    task_role = task["Properties"]["TaskRoleArn"]["Fn::GetAtt"][0]
    (policy,) = [
        p for p in t.find_resources("AWS::IAM::Policy").values() if p["Properties"]["Roles"][0]["Ref"] == task_role
    ]
    statements = policy["Properties"]["PolicyDocument"]["Statement"]
    by_actions = {tuple(s["Action"]): s["Resource"] for s in statements}
    assert set(by_actions) == {DESCRIBE_ACTIONS, GROUP_ACTIONS, QUEUE_ACTIONS}
    assert by_actions[DESCRIBE_ACTIONS] == "*"  # no resource-level permissions for these
    groups = sorted(_text(r).rsplit(":", 1)[1] for r in by_actions[GROUP_ACTIONS])
    assert groups == sorted(
        f"autoScalingGroupName/pixelfleet-test-{p.name}-{kind}" for p in POOLS for kind in ("on-demand", "spot")
    )
    assert all(":autoscaling:" in _text(r) and ":autoScalingGroup:*:" in _text(r) for r in by_actions[GROUP_ACTIONS])
    queue_arns = by_actions[QUEUE_ACTIONS]
    assert sorted(r["Fn::GetAtt"][0] for r in queue_arns) == sorted(t.find_resources("AWS::SQS::Queue"))
    assert not [a for s in statements for a in s["Action"] if "*" in a]
    # and the groups it names are the ones the fleet stacks make
    made = sorted(
        f"autoScalingGroupName/{g['Properties']['AutoScalingGroupName']}"
        for p in POOLS
        for g in Template.from_json(json.loads((out / f"pixelfleet-test-gpu-{p.name}.template.json").read_text()))
        .find_resources("AWS::AutoScaling::AutoScalingGroup")
        .values()
    )
    assert made == groups
