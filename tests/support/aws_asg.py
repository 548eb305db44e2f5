"""The two Auto Scaling groups of one pool, as the autoscaler tests make them under moto."""

from __future__ import annotations

from typing import Any

import boto3


def make_pool_groups(region: str, *, on_demand_max: int = 2, spot_max: int = 10) -> Any:
    """A launch template and the pool's empty On-Demand and Spot groups (``pool-od``,
    ``pool-spot``); returns the autoscaling client. Call inside ``mock_aws()``."""
    ec2 = boto3.client("ec2", region_name=region)
    ec2.create_launch_template(LaunchTemplateName="ue-build", LaunchTemplateData={"ImageId": "ami-12c6146b"})
    client = boto3.client("autoscaling", region_name=region)
    for name, most in (("pool-od", on_demand_max), ("pool-spot", spot_max)):
        client.create_auto_scaling_group(
            AutoScalingGroupName=name,
            LaunchTemplate={"LaunchTemplateName": "ue-build", "Version": "$Latest"},
            MinSize=0,
            MaxSize=most,
            DesiredCapacity=0,
            AvailabilityZones=[f"{region}a"],
        )
    return client
