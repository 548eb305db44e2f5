"""The autoscaler of each GPU pool (``pixelfleet autoscale``, docs/autoscaling.md) as one small
Fargate service, in a stack of its own that deploys after the pools' groups exist.

One task runs one container per pool, each ``pixelfleet autoscale --matchmaker URL --config
FILE`` with the control-plane image: the config (both of the pool's group names, its
bounds, its notice queue) comes in an environment variable, which the container's shell
hands to the autoscaler as the file ``/dev/fd/3``, a here-document on a pipe (the image's
``/bin/sh`` is dash): nothing is written to disk, so the root filesystem stays read-only
and no task volume is needed (a Fargate bind mount is owned by root, which the image's
user 10001 could not write). The service runs exactly one task, never two during a deploy
(two controllers would fight over the same groups).

Each pool gets an SQS queue that an EventBridge rule fills with the ``EC2 Spot Instance
Interruption Warning`` and ``EC2 Instance Rebalance Recommendation`` events (every pool's
queue gets every notice: the events do not name the group, and a notice for another
pool's instance is not one of this pool's hosts). The task role may describe every group
(those actions have no resource-level permissions), change only the pools' groups, and
read and delete messages of the pools' queues.
"""

from __future__ import annotations

from typing import Any

from aws_cdk import Aws, Duration, Stack
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from pixelfleet_deploy.config import AUTOSCALER_CPU, AUTOSCALER_MEMORY_MIB, GpuPool, StageConfig
from pixelfleet_deploy.data import DataStack
from pixelfleet_deploy.gpu_fleet import group_names

__all__ = [
    "AUTOSCALER_CPU",
    "AUTOSCALER_MEMORY_MIB",
    "CONFIG_VARIABLE",
    "DESCRIBE_ACTIONS",
    "GROUP_ACTIONS",
    "NOTICE_DETAIL_TYPES",
    "QUEUE_ACTIONS",
    "URL_VARIABLE",
    "AutoscalerStack",
    "container_name",
    "pool_config",
]

NOTICE_DETAIL_TYPES = ("EC2 Spot Instance Interruption Warning", "EC2 Instance Rebalance Recommendation")
# Describe calls: no resource-level permissions in EC2 Auto Scaling.
DESCRIBE_ACTIONS = ("autoscaling:DescribeAutoScalingGroups", "autoscaling:DescribeScalingActivities")
# What the aws-asg provider does to a group (docs/autoscaling.md, pixelfleet autoscale).
GROUP_ACTIONS = (
    "autoscaling:SetDesiredCapacity",
    "autoscaling:UpdateAutoScalingGroup",
    "autoscaling:SetInstanceProtection",
    "autoscaling:TerminateInstanceInAutoScalingGroup",
    "autoscaling:PutWarmPool",
)
QUEUE_ACTIONS = ("sqs:ReceiveMessage", "sqs:DeleteMessage")  # DeleteMessageBatch is DeleteMessage in IAM
CONFIG_VARIABLE = "PIXELFLEET_AUTOSCALE_CONFIG"
URL_VARIABLE = "PIXELFLEET_AUTOSCALE_MATCHMAKER"


def container_name(pool: GpuPool) -> str:
    return f"autoscale-{pool.name}"


def start_script() -> str:
    """The container's ``sh -c``: exec the autoscaler (PID 1 then, so it gets ECS's SIGTERM)
    with the config from the environment on file descriptor 3. The expanded value is not
    expanded again inside the here-document, so any JSON passes through as it is."""
    return (
        f'exec pixelfleet autoscale --matchmaker "${URL_VARIABLE}" --config /dev/fd/3 3<<EOF\n${CONFIG_VARIABLE}\nEOF\n'
    )


def pool_config(stage: StageConfig, pool: GpuPool, region: str, queue_url: str) -> dict[str, Any]:
    """The pool's ``--config`` (``autoscale.run.AwsAutoscaleConfig``), from the stage's pool.

    ``on_demand_ceiling`` is the On-Demand group's own max: CloudFormation owns ``MaxSize``,
    and a max raised by the autoscaler would be set back by the next deploy, which lowers
    the group's desired capacity with it. So Spot refusals fall back to On-Demand only
    within that max (docs/deploy.md, "Not yet")."""
    names = group_names(stage, pool)
    return {
        "aws": {
            "on_demand_group": names["on_demand"],
            "spot_group": names["spot"],
            "region": region,
            # the same warm pool the fleet stack makes, so either writing it leaves it as it is
            "warm_pool_min": pool.warm_pool_size,
            "warm_pool_state": "Stopped",
            "reuse_on_scale_in": True,
            "on_demand_ceiling": pool.on_demand_max,
            "notice_queue_url": queue_url,
        },
        "tenant": pool.tenant,
        "app": pool.app,
        "policy": {
            "min_hosts": pool.on_demand_min,
            "max_hosts": pool.on_demand_max + pool.spot_max,
            "slots_per_host": pool.slots_per_host,
        },
    }


def group_arn(name: str) -> str:
    """A group's ARN by name; the id in the middle is made by AWS at creation."""
    return (
        f"arn:{Aws.PARTITION}:autoscaling:{Aws.REGION}:{Aws.ACCOUNT_ID}:autoScalingGroup:*:autoScalingGroupName/{name}"
    )


class AutoscalerStack(Stack):
    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        stage: StageConfig,
        vpc: ec2.IVpc,
        data: DataStack,
        cluster: ecs.ICluster,
        log_group: logs.ILogGroup,
        matchmaker_url: str,
        **kwargs: Any,
    ) -> None:
        super().__init__(scope, id, **kwargs)
        self.queues: dict[str, sqs.Queue] = {}
        task = ecs.FargateTaskDefinition(
            self,
            "Task",
            cpu=AUTOSCALER_CPU,
            memory_limit_mib=AUTOSCALER_MEMORY_MIB,
            runtime_platform=ecs.RuntimePlatform(
                cpu_architecture=ecs.CpuArchitecture.X86_64,
                operating_system_family=ecs.OperatingSystemFamily.LINUX,
            ),
        )
        task.add_to_execution_role_policy(iam.PolicyStatement(actions=["kms:Decrypt"], resources=[data.key.key_arn]))
        for pool in stage.pools:
            queue = sqs.Queue(
                self,
                f"Notices{pool.name}",
                encryption=sqs.QueueEncryption.SQS_MANAGED,
                enforce_ssl=True,
                retention_period=Duration.minutes(15),  # a notice is worth two minutes at most
            )
            events.Rule(
                self,
                f"NoticeRule{pool.name}",
                description=f"Spot interruption and rebalance notices to pool {pool.name}'s autoscaler",
                event_pattern=events.EventPattern(source=["aws.ec2"], detail_type=list(NOTICE_DETAIL_TYPES)),
                targets=[targets.SqsQueue(queue)],
            )
            self.queues[pool.name] = queue
            task.add_container(
                container_name(pool),
                image=ecs.ContainerImage.from_ecr_repository(data.repositories["control-plane"], tag=stage.image_tag),
                entry_point=["/bin/sh", "-c"],
                command=[start_script()],
                environment={
                    "PIXELFLEET_LOG_FORMAT": "json",
                    URL_VARIABLE: matchmaker_url,
                    CONFIG_VARIABLE: self.to_json_string(pool_config(stage, pool, self.region, queue.queue_url)),
                },
                secrets={"PIXELFLEET_ADMIN_TOKEN": ecs.Secret.from_secrets_manager(data.admin_token)},
                logging=ecs.LogDriver.aws_logs(stream_prefix=container_name(pool), log_group=log_group),
                readonly_root_filesystem=True,
                user="10001",
                stop_timeout=Duration.seconds(30),
            )

        role = task.task_role
        role.add_to_principal_policy(iam.PolicyStatement(actions=list(DESCRIBE_ACTIONS), resources=["*"]))
        role.add_to_principal_policy(
            iam.PolicyStatement(
                actions=list(GROUP_ACTIONS),
                resources=[group_arn(name) for pool in stage.pools for name in group_names(stage, pool).values()],
            )
        )
        role.add_to_principal_policy(
            iam.PolicyStatement(actions=list(QUEUE_ACTIONS), resources=[q.queue_arn for q in self.queues.values()])
        )
        self.security_group = ec2.SecurityGroup(
            self, "Sg", vpc=vpc, description="autoscalers: out to the matchmaker and AWS APIs, nothing in"
        )
        self.service = ecs.FargateService(
            self,
            "Service",
            cluster=cluster,
            task_definition=task,
            desired_count=1,
            # one controller per pool at any time: the old task stops before the new one starts
            min_healthy_percent=0,
            max_healthy_percent=100,
            security_groups=[self.security_group],
            vpc_subnets=ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS),
            circuit_breaker=ecs.DeploymentCircuitBreaker(rollback=True),
            enable_execute_command=False,
        )
