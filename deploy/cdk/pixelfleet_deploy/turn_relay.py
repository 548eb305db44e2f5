"""coturn on hosts with public addresses (a relay must be reachable on its own address, so
it sits in public subnets, not behind the NLB), rendering deploy/coturn's template with
the shared secret from Secrets Manager at boot."""

from __future__ import annotations

from typing import Any

from aws_cdk import Stack
from aws_cdk import aws_autoscaling as autoscaling
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from constructs import Construct

from pixelfleet_deploy.config import StageConfig
from pixelfleet_deploy.data import DataStack
from pixelfleet_deploy.gpu_fleet import IMDS_TOKEN

TURN_PORT = 3478
TURNS_PORT = 5349


class TurnStack(Stack):
    def __init__(
        self, scope: Construct, id: str, *, stage: StageConfig, vpc: ec2.IVpc, data: DataStack, **kwargs: Any
    ) -> None:
        super().__init__(scope, id, **kwargs)
        self.security_group = ec2.SecurityGroup(
            self, "TurnSg", vpc=vpc, description="coturn: listeners and relay ports", allow_all_outbound=False
        )
        anywhere = ec2.Peer.any_ipv4()
        self.security_group.add_ingress_rule(anywhere, ec2.Port.udp(TURN_PORT), "TURN/STUN over UDP")
        self.security_group.add_ingress_rule(anywhere, ec2.Port.tcp(TURN_PORT), "TURN over TCP")
        self.security_group.add_ingress_rule(anywhere, ec2.Port.tcp(TURNS_PORT), "TURN over TLS")
        relay = ec2.Port.udp_range(stage.turn_relay_min_port, stage.turn_relay_max_port)
        self.security_group.add_ingress_rule(anywhere, relay, "TURN relay ports (players' media)")
        # Relays reach only the VPC (the UE hosts); coturn's denied-peer-ip lines say the same.
        self.security_group.add_egress_rule(ec2.Peer.ipv4(vpc.vpc_cidr_block), ec2.Port.all_udp(), "relay to UE hosts")
        self.security_group.add_egress_rule(anywhere, ec2.Port.tcp(443), "Secrets Manager, ECR, SSM over HTTPS")
        self.security_group.add_egress_rule(anywhere, relay, "relayed media back to players")

        role = iam.Role(
            self,
            "TurnRole",
            assumed_by=iam.ServicePrincipal("ec2.amazonaws.com"),
            description="coturn host: read the TURN secret, pull the coturn image",
            managed_policies=[iam.ManagedPolicy.from_aws_managed_policy_name("AmazonSSMManagedInstanceCore")],
        )
        data.turn_secret.grant_read(role)
        data.repositories["coturn"].grant_pull(role)
        image = data.repositories["coturn"].repository_uri_for_tag(stage.image_tag)
        user_data = ec2.UserData.for_linux()
        user_data.add_commands(
            "set -euo pipefail",
            IMDS_TOKEN,
            'meta() { curl -sf -H "X-aws-ec2-metadata-token: $TOKEN" http://169.254.169.254/latest/meta-data/$1; }',
            f"SECRET=$(aws secretsmanager get-secret-value --region {self.region}"
            f" --secret-id {data.turn_secret.secret_arn} --query SecretString --output text)",
            f"aws ecr get-login-password --region {self.region} | docker login --username AWS"
            f" --password-stdin {image.split('/')[0]}",
            "docker run -d --name coturn --restart unless-stopped --network host"
            ' -e TURN_SECRET="$SECRET" -e TURN_SECRET_PREVIOUS="$SECRET" -e TURN_REALM=pixelfleet'
            ' -e PRIVATE_IP="$(meta local-ipv4)" -e PUBLIC_IP="$(meta public-ipv4)"'
            f" -e MIN_PORT={stage.turn_relay_min_port} -e MAX_PORT={stage.turn_relay_max_port}"
            f" -e UE_PEER_RANGE={vpc.vpc_cidr_block} {image}",
        )
        template = ec2.LaunchTemplate(
            self,
            "LaunchTemplate",
            machine_image=ec2.MachineImage.latest_amazon_linux2023(cpu_type=ec2.AmazonLinuxCpuType.ARM_64),
            instance_type=ec2.InstanceType(stage.turn_instance_type),
            role=role,
            security_group=self.security_group,
            user_data=user_data,
            require_imdsv2=True,
            associate_public_ip_address=True,
            detailed_monitoring=True,
            block_devices=[
                ec2.BlockDevice(
                    device_name="/dev/xvda",
                    volume=ec2.BlockDeviceVolume.ebs(20, encrypted=True, volume_type=ec2.EbsDeviceVolumeType.GP3),
                )
            ],
        )
        self.group = autoscaling.AutoScalingGroup(
            self,
            "Hosts",
            vpc=vpc,
            vpc_subnets=ec2.SubnetSelection(subnet_type=ec2.SubnetType.PUBLIC),
            launch_template=template,
            min_capacity=stage.turn_hosts,
            max_capacity=stage.turn_hosts * 4,
            group_metrics=[autoscaling.GroupMetrics.all()],
        )
