"""One GPU pool: the two Auto Scaling groups the autoscaler drives.

- On-Demand with a warm pool of stopped, pre-initialised hosts: the baseline and the hosts
  that must not vanish mid-session. A warm host starts in about a minute instead of the UE
  build's full cold start. One instance type, the pool's first: AWS refuses a warm pool on a
  group with a mixed instances policy (for several On-Demand types, give each its own pool).
- Spot for bursts, capacity-optimised over every listed type, no warm pool (a Spot host can
  be taken back at any time, so keeping stopped ones buys nothing).

Both start the agent from the launch template's user data; scale-in protection is left to
the autoscaler, which drains a host (``POST /admin/hosts/{id}/drain``) before it lets go.

Each host authenticates with its own agent token (issue 11): the groups' lifecycle hooks
have ``agent_tokens.AgentTokenMinter`` mint it into SSM at launch, and the host reads its
own parameter at every boot (a warm-pool host boots twice: warming, and into service).
"""

from __future__ import annotations

from typing import Any

from aws_cdk import Duration, Stack
from aws_cdk import aws_autoscaling as autoscaling
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from constructs import Construct

from pixelfleet_deploy.agent_tokens import INSTANCE_TAG, LAUNCH_TIMEOUT_S, AgentTokenMinter, lifecycle_hooks
from pixelfleet_deploy.config import GpuPool, StageConfig
from pixelfleet_deploy.control_plane import PLAYER_PORT, STREAMER_PORT
from pixelfleet_deploy.data import DataStack

AGENT_METRICS_PORT = 9102
IMDS_TOKEN = (
    "TOKEN=$(curl -sf -X PUT http://169.254.169.254/latest/api/token -H 'X-aws-ec2-metadata-token-ttl-seconds: 60')"
)
CLOUDWATCH_NAMESPACE = "Pixelfleet"
# What the SSM agent needs for Session Manager (shell access without SSH) and Run Command,
# in place of AmazonSSMManagedInstanceCore, which also allows ssm:GetParameter(s) on every
# parameter: with it any host could read every other host's agent token.
SESSION_MANAGER_ACTIONS = (
    "ssm:UpdateInstanceInformation",
    "ssmmessages:CreateControlChannel",
    "ssmmessages:CreateDataChannel",
    "ssmmessages:OpenControlChannel",
    "ssmmessages:OpenDataChannel",
    "ec2messages:AcknowledgeMessage",
    "ec2messages:DeleteMessage",
    "ec2messages:FailMessage",
    "ec2messages:GetEndpoint",
    "ec2messages:GetMessages",
    "ec2messages:SendReply",
)
# Every way to read a parameter's value (the explicit Deny below names them all).
PARAMETER_READS = ("ssm:GetParameter", "ssm:GetParameters", "ssm:GetParametersByPath", "ssm:GetParameterHistory")


def session_manager_statement() -> iam.PolicyStatement:
    # These actions have no resource type; they open the SSM agent's channels, not data.
    return iam.PolicyStatement(actions=list(SESSION_MANAGER_ACTIONS), resources=["*"])


BOOT_SCRIPT = "/var/lib/cloud/scripts/per-boot/pixelfleet-agent.sh"


def agent_user_data(
    *,
    stage: StageConfig,
    pool: GpuPool,
    region: str,
    image: str,
    matchmaker_url: str,
    signaling_host: str,
    token_path: str,
) -> list[str]:
    """Shell lines that install (and run once) the boot script that starts the agent container.

    The script runs at every boot (cloud-init's per-boot scripts), so a warm-pool host that
    is started into service reads its token and starts the agent then; while the host is
    being warmed it only pulls the image. It waits for its token: the launch hook's function
    writes it within seconds, while the host boots.
    """
    env = agent_environment(pool=pool, region=region, matchmaker_url=matchmaker_url, signaling_host=signaling_host)
    flags = " ".join(f"-e {k}={v}" for k, v in env.items())
    tries = LAUNCH_TIMEOUT_S // 5
    script = [
        "#!/bin/bash",
        "set -euo pipefail",
        IMDS_TOKEN,
        'meta() { curl -sf -H "X-aws-ec2-metadata-token: $TOKEN" http://169.254.169.254/latest/meta-data/$1; }',
        "AZ=$(meta placement/availability-zone); HOST_ID=$(meta instance-id)",
        # one launch template for both groups: a Spot host's agent watches for its interruption notice
        'SPOT=false; [ "$(meta instance-life-cycle || true)" = spot ] && SPOT=true',
        "STATE=$(meta autoscaling/target-lifecycle-state || echo InService)",
        f"aws ecr get-login-password --region {region}"
        f" | docker login --username AWS --password-stdin {image.split('/')[0]}",
        f"docker pull {image}",
        'case "$STATE" in Warmed:*) exit 0 ;; esac  # warming: image pulled, no agent until in service',
        # This host's own token (agent_tokens.py); the instance role may read no other.
        f'PARAM="{token_path}/$HOST_ID"; AGENT_TOKEN=""',
        f"for _ in $(seq {tries}); do"
        f' AGENT_TOKEN=$(aws ssm get-parameter --region {region} --name "$PARAM" --with-decryption'
        " --query Parameter.Value --output text 2>/dev/null) && break; sleep 5; done",
        '[ -n "$AGENT_TOKEN" ] || { echo "no agent token at $PARAM" >&2; exit 1; }',
        "docker rm -f pixelfleet-agent >/dev/null 2>&1 || true",
        # `-e NAME` alone: docker takes the value from this environment, off the command line.
        'export PIXELFLEET_AGENT_TOKEN="$AGENT_TOKEN"',
        "docker run -d --name pixelfleet-agent --restart unless-stopped --runtime nvidia --gpus all"
        ' --network host -e PIXELFLEET_AGENT_TOKEN -e PIXELFLEET_AGENT__HOST_ID="$HOST_ID"'
        f' -e PIXELFLEET_AGENT__AZ="$AZ" -e PIXELFLEET_AGENT__SPOT="$SPOT" {flags} {image}',
    ]
    return [
        "set -euo pipefail",
        f"mkdir -p {BOOT_SCRIPT.rsplit('/', 1)[0]}",
        f"cat > {BOOT_SCRIPT} <<'PIXELFLEET_EOF'",
        *script,
        "PIXELFLEET_EOF",
        f"chmod 0700 {BOOT_SCRIPT}",
        BOOT_SCRIPT,  # per-boot scripts ran before user data on this first boot
    ]


def agent_environment(*, pool: GpuPool, region: str, matchmaker_url: str, signaling_host: str) -> dict[str, str]:
    """The agent container's settings (besides its token, host id and AZ, which the boot script adds)."""
    return {
        "PIXELFLEET_AGENT__MATCHMAKER_URL": matchmaker_url,
        # the streamers this host starts connect to signalling's streamer port, through the NLB
        "PIXELFLEET_AGENT__STREAMER_URL": f"ws://{signaling_host}:{STREAMER_PORT}",
        "PIXELFLEET_AGENT__SIGNALING_API_URL": f"http://{signaling_host}:{PLAYER_PORT}",
        "PIXELFLEET_AGENT__APP": pool.app,
        "PIXELFLEET_AGENT__TENANT": pool.tenant,
        "PIXELFLEET_AGENT__REGION": region,
        "PIXELFLEET_AGENT__CLOUDWATCH_NAMESPACE": CLOUDWATCH_NAMESPACE,
        "PIXELFLEET_LOG_FORMAT": "json",
    }


def group_names(stage: StageConfig, pool: GpuPool) -> dict[str, str]:
    """Fixed group names: the token function's rule and role name them before the groups exist,
    and the autoscaler's ``on_demand_group``/``spot_group`` settings take them as they are."""
    prefix = f"pixelfleet-{stage.name}-{pool.name}"
    return {"on_demand": f"{prefix}-on-demand", "spot": f"{prefix}-spot"}


class GpuFleetStack(Stack):
    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        stage: StageConfig,
        pool: GpuPool,
        vpc: ec2.IVpc,
        data: DataStack,
        matchmaker_url: str,
        signaling_host: str,
        **kwargs: Any,
    ) -> None:
        super().__init__(scope, id, **kwargs)
        self.role = iam.Role(
            self,
            "HostRole",
            assumed_by=iam.ServicePrincipal("ec2.amazonaws.com"),
            description="GPU host: read its own token and the builds, pull its image, publish metrics",
        )
        self.role.add_to_policy(session_manager_statement())
        names = group_names(stage, pool)
        self.tokens = AgentTokenMinter(
            self,
            "AgentTokens",
            stage=stage.name,
            pool=pool.name,
            tenants=[pool.tenant],
            group_names=list(names.values()),
            agent_key=data.agent_key,
            key=data.key,
            vpc=vpc,
            ttl_s=stage.agent_token_ttl_s,
        )
        # Its own token only: the parameter carries the instance's ARN as a tag, and the role
        # session of an instance profile carries ec2:SourceInstanceARN (docs/deploy.md).
        own = {"StringEquals": {f"aws:ResourceTag/{INSTANCE_TAG}": "${ec2:SourceInstanceARN}"}}
        self.role.add_to_policy(
            iam.PolicyStatement(
                actions=["ssm:GetParameter"],
                resources=[self.tokens.parameters_arn],
                conditions=own if stage.host_reads_own_token_only else None,
            )
        )
        if stage.host_reads_own_token_only:
            # Whatever else a later change attaches to the role, no read of another host's token.
            path_arn = self.tokens.parameters_arn.removesuffix("/*")
            self.role.add_to_policy(
                iam.PolicyStatement(
                    effect=iam.Effect.DENY,
                    actions=list(PARAMETER_READS),
                    resources=[path_arn, self.tokens.parameters_arn],
                    conditions={"StringNotEquals": {f"aws:ResourceTag/{INSTANCE_TAG}": "${ec2:SourceInstanceARN}"}},
                )
            )
        data.repositories["agent"].grant_pull(self.role)
        # Named actions on named keys (grant_read/grant_put would add s3:GetObject*, s3:List* and
        # kms:GenerateDataKey*): read UE builds, write this pool's logs, under the data key.
        self.role.add_to_policy(
            iam.PolicyStatement(
                actions=["s3:GetObject"], resources=[data.imported(self, "artifacts").arn_for_objects("builds/*")]
            )
        )
        self.role.add_to_policy(
            iam.PolicyStatement(
                actions=["s3:PutObject"],
                resources=[data.imported(self, "logs").arn_for_objects(f"agents/{pool.name}/*")],
            )
        )
        # The stage key only through SSM (its token) and S3 (builds, logs), not on any ciphertext.
        self.role.add_to_policy(
            iam.PolicyStatement(
                actions=["kms:Decrypt", "kms:GenerateDataKey"],
                resources=[data.key.key_arn],
                conditions={
                    "StringEquals": {
                        "kms:ViaService": [f"ssm.{self.region}.amazonaws.com", f"s3.{self.region}.amazonaws.com"]
                    }
                },
            )
        )
        self.role.add_to_policy(
            iam.PolicyStatement(
                actions=["cloudwatch:PutMetricData"],
                resources=["*"],  # PutMetricData has no resource type; the namespace condition narrows it
                conditions={"StringEquals": {"cloudwatch:namespace": CLOUDWATCH_NAMESPACE}},
            )
        )
        self.security_group = ec2.SecurityGroup(self, "HostSg", vpc=vpc, description=f"GPU pool {pool.name}")
        self.security_group.add_ingress_rule(
            ec2.Peer.ipv4(vpc.vpc_cidr_block), ec2.Port.tcp(AGENT_METRICS_PORT), "agent metrics from the VPC"
        )
        self.security_group.add_ingress_rule(
            ec2.Peer.ipv4(vpc.vpc_cidr_block), ec2.Port.udp_range(1024, 65535), "WebRTC media from coturn relays"
        )
        user_data = ec2.UserData.for_linux()
        user_data.add_commands(
            *agent_user_data(
                stage=stage,
                pool=pool,
                region=self.region,
                image=data.repositories["agent"].repository_uri_for_tag(stage.image_tag),
                matchmaker_url=matchmaker_url,
                signaling_host=signaling_host,
                token_path=self.tokens.path,
            )
        )
        self.launch_template = ec2.LaunchTemplate(
            self,
            "LaunchTemplate",
            machine_image=ec2.MachineImage.from_ssm_parameter(pool.image_id_ssm_parameter),
            instance_type=ec2.InstanceType(pool.instance_types[0]),
            role=self.role,
            security_group=self.security_group,
            user_data=user_data,
            require_imdsv2=True,
            detailed_monitoring=True,
            block_devices=[
                ec2.BlockDevice(
                    device_name="/dev/sda1",
                    volume=ec2.BlockDeviceVolume.ebs(
                        pool.root_volume_gb, encrypted=True, volume_type=ec2.EbsDeviceVolumeType.GP3
                    ),
                )
            ],
        )
        overrides = [
            autoscaling.LaunchTemplateOverrides(instance_type=ec2.InstanceType(t)) for t in pool.instance_types
        ]
        private = ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS)
        # AWS refuses a warm pool on a group with a mixed instances policy: the On-Demand group
        # runs the launch template as it is, with its one instance type (the pool's first);
        # only the Spot group spreads over every listed type.
        self.on_demand = autoscaling.AutoScalingGroup(
            self,
            "OnDemand",
            auto_scaling_group_name=names["on_demand"],
            vpc=vpc,
            vpc_subnets=private,
            min_capacity=pool.on_demand_min,
            max_capacity=pool.on_demand_max,
            launch_template=self.launch_template,
            health_checks=autoscaling.HealthChecks.ec2(grace_period=Duration.minutes(10)),
            group_metrics=[autoscaling.GroupMetrics.all()],
            default_instance_warmup=Duration.minutes(5),
        )
        if pool.warm_pool_size > 0:
            self.on_demand.add_warm_pool(
                min_size=pool.warm_pool_size,
                pool_state=autoscaling.PoolState.STOPPED,
                reuse_on_scale_in=True,
            )
        self.spot = autoscaling.AutoScalingGroup(
            self,
            "Spot",
            auto_scaling_group_name=names["spot"],
            vpc=vpc,
            vpc_subnets=private,
            min_capacity=0,
            max_capacity=pool.spot_max,
            mixed_instances_policy=autoscaling.MixedInstancesPolicy(
                launch_template=self.launch_template,
                launch_template_overrides=overrides,
                instances_distribution=autoscaling.InstancesDistribution(
                    on_demand_base_capacity=0,
                    on_demand_percentage_above_base_capacity=0,
                    spot_allocation_strategy=autoscaling.SpotAllocationStrategy.PRICE_CAPACITY_OPTIMIZED,
                ),
            ),
            capacity_rebalance=True,
            health_checks=autoscaling.HealthChecks.ec2(grace_period=Duration.minutes(10)),
            group_metrics=[autoscaling.GroupMetrics.all()],
        )
        for group in (self.on_demand, self.spot):
            cfn = group.node.default_child
            assert isinstance(cfn, autoscaling.CfnAutoScalingGroup)
            cfn.lifecycle_hook_specification_list = lifecycle_hooks()
            group.node.add_dependency(self.tokens)  # the function and its rule exist before any launch
