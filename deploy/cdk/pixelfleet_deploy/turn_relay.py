"""coturn on hosts with public addresses (a relay must be reachable on its own address, so
it sits in public subnets, not behind the NLB), rendering deploy/coturn's template with
the shared secret from Secrets Manager at boot.

Each relay has an Elastic IP of its own, so its address outlives the instance: signalling
hands players ``turn:<EIP>:3478`` URLs (``PIXELFLEET_TURN__URLS``, from :attr:`TurnStack.urls`)
and coturn announces the same address (``external-ip``). One Auto Scaling group of one
instance per relay replaces a failed host; the new instance takes over its group's address
at boot (``associate-address --allow-reassociation``), before it starts coturn.

The hosts are Arm (Graviton, ``turn_instance_type``); the pipeline builds the coturn image
for ``linux/arm64`` on an Arm build host to match (pipeline.py, ``TURN_ARCH``).
"""

from __future__ import annotations

from typing import Any

from aws_cdk import Stack
from aws_cdk import aws_autoscaling as autoscaling
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from constructs import Construct

from pixelfleet_deploy.config import StageConfig
from pixelfleet_deploy.data import DataStack
from pixelfleet_deploy.gpu_fleet import IMDS_TOKEN, session_manager_statement

TURN_PORT = 3478
TURNS_PORT = 5349
# The relays' CPU architecture: the AMI below and the pipeline's coturn build both use it.
TURN_ARCH = "arm64"
INSTALL_DOCKER = "dnf install -y docker && systemctl enable --now docker"  # Amazon Linux 2023 has no Docker


def turn_urls(address: str) -> list[str]:
    """What signalling hands players for one relay (UDP first; TCP for networks that block UDP)."""
    return [f"turn:{address}:{TURN_PORT}?transport=udp", f"turn:{address}:{TURN_PORT}?transport=tcp"]


def turn_user_data(
    *, stage: StageConfig, region: str, image: str, secret_arn: str, allocation_id: str, address: str, peers: str
) -> list[str]:
    """Boot script of one relay: take its Elastic IP, install Docker, run coturn announcing that IP."""
    return [
        "set -euo pipefail",
        IMDS_TOKEN,
        'meta() { curl -sf -H "X-aws-ec2-metadata-token: $TOKEN" http://169.254.169.254/latest/meta-data/$1; }',
        # A replacement takes the address over from the host it replaces.
        f"aws ec2 associate-address --region {region} --allocation-id {allocation_id}"
        ' --instance-id "$(meta instance-id)" --allow-reassociation',
        INSTALL_DOCKER,
        f"SECRET=$(aws secretsmanager get-secret-value --region {region}"
        f" --secret-id {secret_arn} --query SecretString --output text)",
        f"aws ecr get-login-password --region {region} | docker login --username AWS"
        f" --password-stdin {image.split('/')[0]}",
        "docker run -d --name coturn --restart unless-stopped --network host"
        ' -e TURN_SECRET="$SECRET" -e TURN_SECRET_PREVIOUS="$SECRET" -e TURN_REALM=pixelfleet'
        f' -e PRIVATE_IP="$(meta local-ipv4)" -e PUBLIC_IP={address}'
        f" -e MIN_PORT={stage.turn_relay_min_port} -e MAX_PORT={stage.turn_relay_max_port}"
        f" -e UE_PEER_RANGE={peers} {image}",
    ]


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
        self.security_group.add_egress_rule(
            anywhere, ec2.Port.tcp(443), "Secrets Manager, ECR, EC2, SSM over HTTPS; dnf's repositories"
        )
        self.security_group.add_egress_rule(anywhere, relay, "relayed media back to players")

        self.role = iam.Role(
            self,
            "TurnRole",
            assumed_by=iam.ServicePrincipal("ec2.amazonaws.com"),
            description="coturn host: take its Elastic IP, read the TURN secret, pull the coturn image",
        )
        data.turn_secret.grant_read(self.role)
        data.repositories["coturn"].grant_pull(self.role)
        image = data.repositories["coturn"].repository_uri_for_tag(stage.image_tag)
        cpu = ec2.AmazonLinuxCpuType.ARM_64 if TURN_ARCH == "arm64" else ec2.AmazonLinuxCpuType.X86_64
        machine_image = ec2.MachineImage.latest_amazon_linux2023(cpu_type=cpu)
        self.addresses: list[ec2.CfnEIP] = []
        self.groups: list[autoscaling.AutoScalingGroup] = []
        for i in range(stage.turn_hosts):
            eip = ec2.CfnEIP(self, f"Address{i}", domain="vpc")
            self.addresses.append(eip)
            group_name = f"pixelfleet-{stage.name}-turn-{i}"
            # Its own address, onto an instance of its own group (the tag the group puts on its instances).
            self.role.add_to_policy(
                iam.PolicyStatement(
                    actions=["ec2:AssociateAddress"],
                    resources=[
                        self.format_arn(service="ec2", resource="elastic-ip", resource_name=eip.attr_allocation_id)
                    ],
                )
            )
            user_data = ec2.UserData.for_linux()
            user_data.add_commands(
                *turn_user_data(
                    stage=stage,
                    region=self.region,
                    image=image,
                    secret_arn=data.turn_secret.secret_arn,
                    allocation_id=eip.attr_allocation_id,
                    address=eip.ref,  # an EIP's Ref is its address
                    peers=vpc.vpc_cidr_block,
                )
            )
            template = ec2.LaunchTemplate(
                self,
                f"LaunchTemplate{i}",
                machine_image=machine_image,
                instance_type=ec2.InstanceType(stage.turn_instance_type),
                role=self.role,
                security_group=self.security_group,
                user_data=user_data,
                require_imdsv2=True,
                associate_public_ip_address=True,  # egress until the Elastic IP replaces it
                detailed_monitoring=True,
                block_devices=[
                    ec2.BlockDevice(
                        device_name="/dev/xvda",
                        volume=ec2.BlockDeviceVolume.ebs(20, encrypted=True, volume_type=ec2.EbsDeviceVolumeType.GP3),
                    )
                ],
            )
            self.groups.append(
                autoscaling.AutoScalingGroup(
                    self,
                    f"Host{i}",
                    auto_scaling_group_name=group_name,
                    vpc=vpc,
                    vpc_subnets=ec2.SubnetSelection(subnet_type=ec2.SubnetType.PUBLIC),
                    launch_template=template,
                    min_capacity=1,
                    max_capacity=1,
                    group_metrics=[autoscaling.GroupMetrics.all()],
                )
            )
        self.role.add_to_policy(
            iam.PolicyStatement(
                actions=["ec2:AssociateAddress"],
                resources=[self.format_arn(service="ec2", resource="instance", resource_name="*")],
                conditions={
                    "StringLike": {"aws:ResourceTag/aws:autoscaling:groupName": f"pixelfleet-{stage.name}-turn-*"}
                },
            )
        )
        # Session Manager's channel only (AmazonSSMManagedInstanceCore would add ssm:GetParameter on *).
        self.role.add_to_policy(session_manager_statement())
        self.urls = [url for eip in self.addresses for url in turn_urls(eip.ref)]
