"""The VPC every other stack lives in: public subnets for the NLB, NAT and coturn, private
ones for Fargate, Redis and the GPU hosts, across ``max_azs`` zones, with flow logs."""

from __future__ import annotations

from typing import Any

from aws_cdk import RemovalPolicy, Stack
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_logs as logs
from constructs import Construct

from pixelfleet_deploy.config import StageConfig


class NetworkStack(Stack):
    def __init__(self, scope: Construct, id: str, *, stage: StageConfig, **kwargs: Any) -> None:
        super().__init__(scope, id, **kwargs)
        self.vpc = ec2.Vpc(
            self,
            "Vpc",
            max_azs=stage.max_azs,
            nat_gateways=stage.nat_gateways,
            restrict_default_security_group=True,
            subnet_configuration=[
                ec2.SubnetConfiguration(
                    name="public", subnet_type=ec2.SubnetType.PUBLIC, cidr_mask=22, map_public_ip_on_launch=False
                ),
                ec2.SubnetConfiguration(name="private", subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS, cidr_mask=19),
            ],
        )
        key = kms.Key(self, "FlowLogsKey", enable_key_rotation=True, description="VPC flow logs")
        key.grant_encrypt_decrypt(iam.ServicePrincipal(f"logs.{self.region}.amazonaws.com"))
        flow_logs = logs.LogGroup(
            self,
            "FlowLogs",
            retention=logs.RetentionDays.ONE_YEAR,
            encryption_key=key,
            removal_policy=RemovalPolicy.RETAIN,
        )
        self.vpc.add_flow_log("All", destination=ec2.FlowLogDestination.to_cloud_watch_logs(flow_logs))
