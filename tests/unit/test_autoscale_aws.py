"""The ``aws-asg`` provider. moto plays EC2 Auto Scaling for the calls it implements (groups,
desired capacity, warm pool, instance protection, terminate). moto's
``DescribeScalingActivities`` always answers an empty list, so the Spot-refused fallback
runs against botocore's Stubber with the documented response shapes instead."""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber  # type: ignore[import-untyped]
from moto import mock_aws

from autoscale.providers.aws_asg import AwsAsgProvider, AwsAsgSettings

REGION = "us-east-1"
SETTINGS = AwsAsgSettings(
    on_demand_group="pool-od", spot_group="pool-spot", region=REGION, warm_pool_min=2, on_demand_ceiling=6
)


@pytest.fixture
def asg(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    for k, v in {"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x", "AWS_DEFAULT_REGION": REGION}.items():
        monkeypatch.setenv(k, v)
    with mock_aws():
        ec2 = boto3.client("ec2", region_name=REGION)
        ec2.create_launch_template(LaunchTemplateName="ue-build", LaunchTemplateData={"ImageId": "ami-12c6146b"})
        client = boto3.client("autoscaling", region_name=REGION)
        for name, most in (("pool-od", 2), ("pool-spot", 10)):
            client.create_auto_scaling_group(
                AutoScalingGroupName=name,
                LaunchTemplate={"LaunchTemplateName": "ue-build", "Version": "$Latest"},
                MinSize=0,
                MaxSize=most,
                DesiredCapacity=0,
                AvailabilityZones=[f"{REGION}a"],
            )
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


async def test_missing_group_is_a_clear_error(asg: Any) -> None:
    p = AwsAsgProvider(AwsAsgSettings(on_demand_group="pool-od", spot_group="nope", region=REGION), lambda s: asg)
    with pytest.raises(ValueError, match="no Auto Scaling group named nope"):
        await p.hosts()


def _group(name: str, desired: int, most: int) -> dict[str, Any]:
    """A DescribeAutoScalingGroups entry with the fields the API documents as required."""
    return {
        "AutoScalingGroupName": name,
        "MinSize": 0,
        "MaxSize": most,
        "DesiredCapacity": desired,
        "DefaultCooldown": 300,
        "AvailabilityZones": [f"{REGION}a"],
        "HealthCheckType": "EC2",
        "CreatedTime": datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC),
        "Instances": [],
    }


async def test_spot_refused_falls_back_to_on_demand() -> None:
    client = boto3.client("autoscaling", region_name=REGION, aws_access_key_id="x", aws_secret_access_key="x")
    p = AwsAsgProvider(SETTINGS, lambda s: client)
    groups = {"AutoScalingGroupNames": ["pool-od", "pool-spot"]}
    with Stubber(client) as stub:
        # First scale-out: the On-Demand group is full (2 of 2), 3 go to Spot.
        stub.add_response(
            "describe_auto_scaling_groups",
            {"AutoScalingGroups": [_group("pool-od", 2, 2), _group("pool-spot", 0, 10)]},
            groups,
        )
        stub.add_response(
            "set_desired_capacity",
            {},
            {"AutoScalingGroupName": "pool-spot", "DesiredCapacity": 3, "HonorCooldown": False},
        )
        await p.launch(3)
        # Next scale-out: AWS reports the Spot launch failed for capacity; the 3 move to On-Demand
        # (its max raised up to the ceiling), then the new request fits nowhere else but Spot.
        stub.add_response(
            "describe_scaling_activities",
            {
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
            },
            {"AutoScalingGroupName": "pool-spot"},
        )
        stub.add_response(
            "describe_auto_scaling_groups",
            {"AutoScalingGroups": [_group("pool-od", 2, 2), _group("pool-spot", 3, 10)]},
            groups,
        )
        stub.add_response("update_auto_scaling_group", {}, {"AutoScalingGroupName": "pool-od", "MaxSize": 5})
        stub.add_response(
            "set_desired_capacity",
            {},
            {"AutoScalingGroupName": "pool-od", "DesiredCapacity": 5, "HonorCooldown": False},
        )
        stub.add_response(
            "set_desired_capacity",
            {},
            {"AutoScalingGroupName": "pool-spot", "DesiredCapacity": 0, "HonorCooldown": False},
        )
        stub.add_response(
            "describe_auto_scaling_groups",
            {"AutoScalingGroups": [_group("pool-od", 5, 5), _group("pool-spot", 0, 10)]},
            groups,
        )
        stub.add_response(
            "set_desired_capacity",
            {},
            {"AutoScalingGroupName": "pool-spot", "DesiredCapacity": 1, "HonorCooldown": False},
        )
        await p.launch(1)
        stub.assert_no_pending_responses()


def test_spot_notices_mark_the_host_draining() -> None:
    p = AwsAsgProvider(SETTINGS, lambda s: None)
    warning = {"detail-type": "EC2 Spot Instance Interruption Warning", "detail": {"instance-id": "i-0abc"}}
    assert p.spot_notice(warning) == "i-0abc"
    rebalance = {"detail-type": "EC2 Instance Rebalance Recommendation", "detail": {"instance-id": "i-0def"}}
    assert p.spot_notice(rebalance) == "i-0def"
    assert p.spot_notice({"detail-type": "EC2 Instance State-change Notification", "detail": {}}) is None
    assert p._notices == {"i-0abc", "i-0def"}
