"""The ``aws-asg`` provider. moto plays EC2 Auto Scaling for the calls it implements (groups,
desired capacity, warm pool, instance protection, terminate) and SQS (the queue EventBridge
sends Spot notices to). moto's
``DescribeScalingActivities`` always answers an empty list, so the Spot-refused fallback
runs against botocore's Stubber with the documented response shapes instead."""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterator
from typing import Any

import boto3
import msgspec
import pytest
from botocore.stub import Stubber  # type: ignore[import-untyped]
from moto import mock_aws

from autoscale.controller import Controller
from autoscale.policy import PoolPolicy, Scaler, StaticSizer
from autoscale.providers.aws_asg import AwsAsgProvider, AwsAsgSettings
from matchmaker.models import SlotState
from tests.support.aws_asg import make_pool_groups
from tests.unit.test_autoscale_controller import FakeMatchmaker

REGION = "us-east-1"
SETTINGS = AwsAsgSettings(
    on_demand_group="pool-od", spot_group="pool-spot", region=REGION, warm_pool_min=2, on_demand_ceiling=6
)


@pytest.fixture
def asg(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    for k, v in {"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x", "AWS_DEFAULT_REGION": REGION}.items():
        monkeypatch.setenv(k, v)
    with mock_aws():
        client = make_pool_groups(REGION)
        yield client


def group(client: Any, name: str) -> dict[str, Any]:
    g: dict[str, Any] = client.describe_auto_scaling_groups(AutoScalingGroupNames=[name])["AutoScalingGroups"][0]
    return g


async def test_launch_fills_on_demand_then_spot_and_protects_busy_hosts(asg: Any) -> None:
    p = AwsAsgProvider(SETTINGS, lambda s: asg)
    await p.ensure_warm_pool()
    warm = asg.describe_warm_pool(AutoScalingGroupName="pool-od")["WarmPoolConfiguration"]
    assert warm["MinSize"] == 2 and warm["PoolState"] == "Stopped"

    await p.launch(5)
    assert group(asg, "pool-od")["DesiredCapacity"] == 2  # the On-Demand base, up to its max
    assert group(asg, "pool-spot")["DesiredCapacity"] == 3  # the burst on Spot
    hosts = await p.hosts()
    assert len(hosts) == 5 and sum(h.spot for h in hosts) == 3

    busy = {hosts[0].host_id, hosts[3].host_id}
    await p.protect(busy)
    protected = {
        i["InstanceId"]
        for name in ("pool-od", "pool-spot")
        for i in group(asg, name)["Instances"]
        if i["ProtectedFromScaleIn"]
    }
    assert protected == busy
    await p.protect({hosts[0].host_id})  # the session on hosts[3] ended: protection lifted
    assert not next(
        i
        for i in group(asg, "pool-spot")["Instances"] + group(asg, "pool-od")["Instances"]
        if i["InstanceId"] == hosts[3].host_id
    )["ProtectedFromScaleIn"]

    spot_host = next(h for h in hosts if h.spot and h.host_id not in busy)
    await p.terminate(spot_host.host_id)
    assert group(asg, "pool-spot")["DesiredCapacity"] == 2  # decremented, not replaced


async def test_warm_pool_only_on_a_plain_on_demand_group(asg: Any) -> None:
    p = AwsAsgProvider(SETTINGS, lambda s: asg)
    await p.ensure_warm_pool()
    assert "WarmPoolConfiguration" in asg.describe_warm_pool(AutoScalingGroupName="pool-od")
    assert "WarmPoolConfiguration" not in asg.describe_warm_pool(AutoScalingGroupName="pool-spot")

    # A mixed-instances On-Demand group: AWS refuses the warm pool (moto would take it).
    asg.create_auto_scaling_group(
        AutoScalingGroupName="pool-mixed",
        MinSize=0,
        MaxSize=2,
        AvailabilityZones=[f"{REGION}a"],
        MixedInstancesPolicy={
            "LaunchTemplate": {
                "LaunchTemplateSpecification": {"LaunchTemplateName": "ue-build", "Version": "$Latest"},
                "Overrides": [{"InstanceType": "g5.xlarge"}, {"InstanceType": "g6.xlarge"}],
            }
        },
    )
    mixed = AwsAsgProvider(msgspec.structs.replace(SETTINGS, on_demand_group="pool-mixed"), lambda s: asg)
    with pytest.raises(ValueError, match="pool-mixed has a mixed instances policy"):
        await mixed.ensure_warm_pool()
    assert "WarmPoolConfiguration" not in asg.describe_warm_pool(AutoScalingGroupName="pool-mixed")


async def test_missing_group_is_a_clear_error(asg: Any) -> None:
    p = AwsAsgProvider(AwsAsgSettings(on_demand_group="pool-od", spot_group="nope", region=REGION), lambda s: asg)
    with pytest.raises(ValueError, match="no Auto Scaling group named nope"):
        await p.hosts()


def _group(name: str, desired: int, most: int, live: int = 0) -> dict[str, Any]:
    """A DescribeAutoScalingGroups entry with the fields the API documents as required, and
    ``live`` InService instances."""
    return {
        "AutoScalingGroupName": name,
        "MinSize": 0,
        "MaxSize": most,
        "DesiredCapacity": desired,
        "DefaultCooldown": 300,
        "AvailabilityZones": [f"{REGION}a"],
        "HealthCheckType": "EC2",
        "CreatedTime": datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC),
        "Instances": [
            {
                "InstanceId": f"i-{name}-{n}",
                "AvailabilityZone": f"{REGION}a",
                "LifecycleState": "InService",
                "HealthStatus": "Healthy",
                "ProtectedFromScaleIn": False,
            }
            for n in range(live)
        ],
    }


GROUPS = {"AutoScalingGroupNames": ["pool-od", "pool-spot"]}


def _refused() -> dict[str, Any]:
    """A failed Spot scale-out, started now (after the request it answers)."""
    return {
        "Activities": [
            {
                "ActivityId": "a1",
                "AutoScalingGroupName": "pool-spot",
                "Cause": "scale out",
                "StartTime": datetime.datetime.now(datetime.UTC),
                "StatusCode": "Failed",
                "StatusMessage": "Could not launch Spot Instances. InsufficientInstanceCapacity - "
                "There is no Spot capacity available that matches your request.",
            }
        ]
    }


def _desired(group: str, n: int) -> dict[str, Any]:
    return {"AutoScalingGroupName": group, "DesiredCapacity": n, "HonorCooldown": False}


async def test_spot_refused_falls_back_to_on_demand_without_asking_twice() -> None:
    """The controller sees only live instances, so after a refusal it asks again for what
    it asked before; the refused Spot capacity moves to On-Demand once, and the repeat is
    not added on top: total desired stays what was wanted."""
    client = boto3.client("autoscaling", region_name=REGION, aws_access_key_id="x", aws_secret_access_key="x")
    p = AwsAsgProvider(SETTINGS, lambda s: client)
    with Stubber(client) as stub:
        # 2 live On-Demand hosts (its max); the pool wants 5: 3 go to Spot.
        stub.add_response(
            "describe_auto_scaling_groups",
            {"AutoScalingGroups": [_group("pool-od", 2, 2, live=2), _group("pool-spot", 0, 10)]},
            GROUPS,
        )
        stub.add_response("set_desired_capacity", {}, _desired("pool-spot", 3))
        await p.launch(3)
        # AWS refused them. The controller still sees 2 hosts and asks for 3 again: the 3
        # move to On-Demand (its max raised, under the ceiling of 6) and nothing more is asked.
        stub.add_response("describe_scaling_activities", _refused(), {"AutoScalingGroupName": "pool-spot"})
        stub.add_response(
            "describe_auto_scaling_groups",
            {"AutoScalingGroups": [_group("pool-od", 2, 2, live=2), _group("pool-spot", 3, 10)]},
            GROUPS,
        )
        stub.add_response("update_auto_scaling_group", {}, {"AutoScalingGroupName": "pool-od", "MaxSize": 5})
        stub.add_response("set_desired_capacity", {}, _desired("pool-od", 5))
        stub.add_response("set_desired_capacity", {}, _desired("pool-spot", 0))
        stub.add_response(
            "describe_auto_scaling_groups",
            {"AutoScalingGroups": [_group("pool-od", 5, 5, live=2), _group("pool-spot", 0, 10)]},
            GROUPS,
        )
        await p.launch(3)  # total desired 5 + 0: what was wanted, not 8
        # Still booting; the pool now wants 6: one more, and only one, on Spot.
        stub.add_response(
            "describe_auto_scaling_groups",
            {"AutoScalingGroups": [_group("pool-od", 5, 5, live=2), _group("pool-spot", 0, 10)]},
            GROUPS,
        )
        stub.add_response("set_desired_capacity", {}, _desired("pool-spot", 1))
        await p.launch(4)
        stub.assert_no_pending_responses()


async def test_spot_desired_does_not_climb_while_refused_without_fallback() -> None:
    client = boto3.client("autoscaling", region_name=REGION, aws_access_key_id="x", aws_secret_access_key="x")
    settings = msgspec.structs.replace(SETTINGS, on_demand_ceiling=0)  # no On-Demand fallback
    p = AwsAsgProvider(settings, lambda s: client)
    with Stubber(client) as stub:
        stub.add_response(
            "describe_auto_scaling_groups",
            {"AutoScalingGroups": [_group("pool-od", 2, 2, live=2), _group("pool-spot", 0, 10)]},
            GROUPS,
        )
        stub.add_response("set_desired_capacity", {}, _desired("pool-spot", 3))
        await p.launch(3)
        for _ in range(3):  # refused period after period: the same 3 asked again, nothing set
            stub.add_response(
                "describe_auto_scaling_groups",
                {"AutoScalingGroups": [_group("pool-od", 2, 2, live=2), _group("pool-spot", 3, 10)]},
                GROUPS,
            )
            await p.launch(3)
        # One Spot instance arrived; the pool wants one more than before: only that one is added.
        stub.add_response(
            "describe_auto_scaling_groups",
            {"AutoScalingGroups": [_group("pool-od", 2, 2, live=2), _group("pool-spot", 3, 10, live=1)]},
            GROUPS,
        )
        stub.add_response("set_desired_capacity", {}, _desired("pool-spot", 4))
        await p.launch(3)
        stub.assert_no_pending_responses()


def test_spot_notices_mark_the_host_draining() -> None:
    p = AwsAsgProvider(SETTINGS, lambda s: None)
    warning = {"detail-type": "EC2 Spot Instance Interruption Warning", "detail": {"instance-id": "i-0abc"}}
    assert p.spot_notice(warning) == "i-0abc"
    rebalance = {"detail-type": "EC2 Instance Rebalance Recommendation", "detail": {"instance-id": "i-0def"}}
    assert p.spot_notice(rebalance) == "i-0def"
    assert p.spot_notice({"detail-type": "EC2 Instance State-change Notification", "detail": {}}) is None
    assert p._notices == {"i-0abc", "i-0def"}


def _event(kind: str, instance_id: str) -> str:
    """An EventBridge event as an SQS target receives it (the documented shape, trimmed)."""
    return json.dumps(
        {
            "version": "0",
            "id": "7f1e2d3c-0000-0000-0000-000000000000",
            "detail-type": kind,
            "source": "aws.ec2",
            "account": "123456789012",
            "time": "2026-03-01T18:00:00Z",
            "region": REGION,
            "resources": [f"arn:aws:ec2:{REGION}a:instance/{instance_id}"],
            "detail": {"instance-id": instance_id, "instance-action": "terminate"},
        }
    )


async def test_spot_notices_from_the_queue_drain_before_terminate(asg: Any) -> None:
    sqs = boto3.client("sqs", region_name=REGION)
    url = sqs.create_queue(QueueName="spot-notices")["QueueUrl"]
    settings = msgspec.structs.replace(SETTINGS, notice_queue_url=url, on_demand_ceiling=0)
    provider = AwsAsgProvider(settings, lambda s: asg, lambda s: sqs)
    await provider.launch(4)  # 2 On-Demand (its max), 2 Spot
    mm = FakeMatchmaker()
    hosts = await provider.hosts()
    for h in hosts:
        mm.register(h.host_id, 2)  # every instance's agent up and READY
    spot = sorted(h.host_id for h in hosts if h.spot)
    policy = PoolPolicy(min_hosts=0, max_hosts=10, slots_per_host=2, scale_in_cooldown_s=3600)
    c = Controller(mm, provider, Scaler(policy, StaticSizer(4)), clock=lambda: 0.0)
    assert (await c.step()).reason == "steady"

    assert mm.place("kept") is not None
    mm.end("kept")
    busy = mm.slots[f"{spot[1]}/0"]
    busy.state, busy.session_id = SlotState.ASSIGNED, "kept"  # a player on the second Spot host
    sqs.send_message(QueueUrl=url, MessageBody=_event("EC2 Spot Instance Interruption Warning", spot[0]))
    sqs.send_message(QueueUrl=url, MessageBody=_event("EC2 Instance Rebalance Recommendation", spot[1]))
    sqs.send_message(QueueUrl=url, MessageBody=_event("EC2 Instance State-change Notification", spot[0]))
    sqs.send_message(QueueUrl=url, MessageBody="not json")

    d = await c.step()
    assert sorted(d.drain) == spot and d.terminate == []  # both drained in the matchmaker first
    assert all(mm.hosts[h].draining for h in spot)
    assert "Messages" not in sqs.receive_message(QueueUrl=url, WaitTimeSeconds=0)  # all four consumed
    live = {h.host_id for h in await provider.hosts()}
    assert set(spot) <= live

    assert d.launch == 2 and group(asg, "pool-spot")["DesiredCapacity"] == 4  # their replacements

    d = await c.step()
    assert d.terminate == [spot[0]]  # the empty one goes; the busy one stays while its player plays
    assert group(asg, "pool-spot")["DesiredCapacity"] == 3
    protected = {i["InstanceId"] for i in group(asg, "pool-spot")["Instances"] if i["ProtectedFromScaleIn"]}
    assert spot[1] in protected
    assert sorted(mm.calls) == [("drain", spot[0]), ("drain", spot[1])]  # each drained once
