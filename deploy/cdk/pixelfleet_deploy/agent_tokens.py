"""Per-host agent tokens for a GPU pool's Auto Scaling groups (issue 11; docs/deploy.md).

The agent key (the matchmaker's ``PIXELFLEET_MATCHMAKER__AGENT_KEY_SECRET``) stays off the
hosts: a host holding it could mint a token for any host and tenant. Instead each group
has a launch and a terminate lifecycle hook; Auto Scaling sends both to EventBridge, and a
small Lambda (``agent_tokens_fn/handler.py``) mints the new host's token into a
SecureString parameter ``/pixelfleet/<stage>/agent-tokens/<pool>/<instance id>`` (tagged
with the instance's ARN) and deletes it when the host goes. The host reads its own
parameter at boot (``gpu_fleet.py``).

The hooks are declared on the groups themselves (``LifecycleHookSpecificationList``), not as
separate resources, so the hosts a group launches when it is created wait for their token
too; the groups depend on this construct, so the function is there before any launch.
"""

from __future__ import annotations

from pathlib import Path

from aws_cdk import Aws, Duration, IResolvable, RemovalPolicy, Stack
from aws_cdk import aws_autoscaling as autoscaling
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_secretsmanager as sm
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from pixelfleet_deploy.agent_tokens_fn.handler import INSTANCE_TAG

__all__ = ["INSTANCE_TAG", "LAUNCH_TIMEOUT_S", "AgentTokenMinter", "lifecycle_hooks", "parameter_path"]

CODE = Path(__file__).parent / "agent_tokens_fn"
LAUNCH_HOOK = "pixelfleet-agent-token-launch"
TERMINATE_HOOK = "pixelfleet-agent-token-terminate"
LAUNCH_TIMEOUT_S = 300  # a host without its token after this is abandoned (terminated and replaced)
TERMINATE_TIMEOUT_S = 120  # a termination goes on after this, token deleted or not
# The ENI actions a function in a VPC needs (Lambda creates its network interfaces with the
# function's role); they have no resource-level permissions.
VPC_ENI_ACTIONS = (
    "ec2:CreateNetworkInterface",
    "ec2:DescribeNetworkInterfaces",
    "ec2:DeleteNetworkInterface",
    "ec2:AssignPrivateIpAddresses",
    "ec2:UnassignPrivateIpAddresses",
)


def parameter_path(stage: str, pool: str) -> str:
    """Where a pool's host tokens live, one SecureString per instance id below it."""
    return f"/pixelfleet/{stage}/agent-tokens/{pool}"


def lifecycle_hooks() -> list[IResolvable | autoscaling.CfnAutoScalingGroup.LifecycleHookSpecificationProperty]:
    """The two hooks every GPU group carries (no notification target: events go to EventBridge)."""
    return [
        autoscaling.CfnAutoScalingGroup.LifecycleHookSpecificationProperty(
            lifecycle_hook_name=LAUNCH_HOOK,
            lifecycle_transition="autoscaling:EC2_INSTANCE_LAUNCHING",
            default_result="ABANDON",
            heartbeat_timeout=LAUNCH_TIMEOUT_S,
        ),
        autoscaling.CfnAutoScalingGroup.LifecycleHookSpecificationProperty(
            lifecycle_transition="autoscaling:EC2_INSTANCE_TERMINATING",
            lifecycle_hook_name=TERMINATE_HOOK,
            default_result="CONTINUE",
            heartbeat_timeout=TERMINATE_TIMEOUT_S,
        ),
    ]


class AgentTokenMinter(Construct):
    """The function, its role, log group, dead-letter queue and EventBridge rule for one pool."""

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        stage: str,
        pool: str,
        tenants: list[str],
        group_names: list[str],
        agent_key: sm.ISecret,
        key: kms.IKey,
        vpc: ec2.IVpc,
        ttl_s: int,
    ) -> None:
        super().__init__(scope, id)
        stack = Stack.of(self)
        self.path = parameter_path(stage, pool)
        self.parameters_arn = f"arn:{Aws.PARTITION}:ssm:{stack.region}:{stack.account}:parameter{self.path}/*"
        group_arns = [
            f"arn:{Aws.PARTITION}:autoscaling:{stack.region}:{stack.account}:autoScalingGroup:*"
            f":autoScalingGroupName/{name}"
            for name in group_names
        ]
        self.log_group = logs.LogGroup(
            self, "Logs", retention=logs.RetentionDays.ONE_YEAR, encryption_key=key, removal_policy=RemovalPolicy.RETAIN
        )
        # Async invocations that fail every retry, and events EventBridge could not deliver.
        self.dead_letters = sqs.Queue(
            self,
            "DeadLetters",
            encryption=sqs.QueueEncryption.SQS_MANAGED,
            enforce_ssl=True,
            retention_period=Duration.days(14),
        )
        # Named actions on named resources only: no managed policy (AWSLambdaBasicExecutionRole
        # and AWSLambdaVPCAccessExecutionRole would allow logs on every group).
        self.role = iam.Role(
            self,
            "Role",
            assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
            description=f"mints and deletes the agent tokens of GPU pool {pool}",
        )
        self.role.add_to_policy(
            iam.PolicyStatement(actions=["secretsmanager:GetSecretValue"], resources=[agent_key.secret_arn])
        )
        self.role.add_to_policy(
            iam.PolicyStatement(
                actions=["ssm:PutParameter", "ssm:AddTagsToResource", "ssm:DeleteParameter"],
                resources=[self.parameters_arn],
            )
        )
        self.role.add_to_policy(iam.PolicyStatement(actions=["kms:Encrypt"], resources=[key.key_arn]))
        self.role.add_to_policy(
            iam.PolicyStatement(actions=["autoscaling:CompleteLifecycleAction"], resources=group_arns)
        )
        self.role.add_to_policy(
            iam.PolicyStatement(
                actions=["logs:CreateLogStream", "logs:PutLogEvents"], resources=[self.log_group.log_group_arn]
            )
        )
        self.role.add_to_policy(iam.PolicyStatement(actions=list(VPC_ENI_ACTIONS), resources=["*"]))
        self.security_group = ec2.SecurityGroup(
            self,
            "Sg",
            vpc=vpc,
            description=f"agent-token function of GPU pool {pool}: HTTPS out to AWS APIs only",
            allow_all_outbound=False,
        )
        self.security_group.add_egress_rule(ec2.Peer.any_ipv4(), ec2.Port.tcp(443), "AWS APIs through the NAT")
        self.function = lambda_.Function(
            self,
            "Function",
            runtime=lambda_.Runtime.PYTHON_3_14,
            handler="handler.handler",
            code=lambda_.Code.from_asset(str(CODE), exclude=["__pycache__", "*.pyc"]),
            role=self.role,
            timeout=Duration.seconds(30),
            memory_size=256,
            reserved_concurrent_executions=5,  # bursts queue in Lambda's async queue, well inside the hooks' timeout
            retry_attempts=2,
            dead_letter_queue=self.dead_letters,
            log_group=self.log_group,
            vpc=vpc,
            vpc_subnets=ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS),
            security_groups=[self.security_group],
            environment={
                "AGENT_KEY_SECRET_ARN": agent_key.secret_arn,
                "PARAMETER_PATH": self.path,
                "TENANTS": ",".join(tenants),
                "TOKEN_TTL_S": str(ttl_s),
                "KMS_KEY_ID": key.key_arn,
                "GROUP_NAMES": ",".join(group_names),
                "INSTANCE_ARN_PREFIX": f"arn:{Aws.PARTITION}:ec2:{stack.region}:{stack.account}:instance/",
            },
            description=f"pixelfleet {stage}: per-host agent tokens of GPU pool {pool}",
        )
        self.rule = events.Rule(
            self,
            "Lifecycle",
            description=f"launches and terminations of GPU pool {pool}'s hosts",
            event_pattern=events.EventPattern(
                source=["aws.autoscaling"],
                detail_type=["EC2 Instance-launch Lifecycle Action", "EC2 Instance-terminate Lifecycle Action"],
                detail={"AutoScalingGroupName": group_names, "LifecycleHookName": [LAUNCH_HOOK, TERMINATE_HOOK]},
            ),
            targets=[
                targets.LambdaFunction(
                    self.function,
                    dead_letter_queue=self.dead_letters,
                    retry_attempts=8,
                    max_event_age=Duration.seconds(LAUNCH_TIMEOUT_S),
                )
            ],
        )
