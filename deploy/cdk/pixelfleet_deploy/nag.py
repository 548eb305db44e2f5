"""cdk-nag acknowledgements, each with the reason it is acceptable here.

Findings that could be fixed were fixed in the stacks (named IAM actions on data, KMS on
buckets and logs that allow it, IMDSv2, deletion protection, backups). What is left is
acknowledged per stack part (the suffix of ``pixelfleet-<stage>-<part>``; ``*`` = every
stack) with the reason beside it. tests/unit/test_deploy_cdk.py checks synthesis reports no
unacknowledged finding and that every reason is written out.
"""

from __future__ import annotations

import json
from typing import Any

from aws_cdk import Acknowledgment, Stack, Validations
from aws_cdk import aws_iam as iam

AS = "AwsSolutions::AwsSolutions-"
HIPAA = "HIPAA.Security::HIPAA.Security-"
_INLINE = (
    "CDK writes each role's grants as an inline default policy scoped to that role; managed policies would be shared"
)

# Actions CodePipeline's and CodeBuild's constructs grant on their artifact bucket and key.
PIPELINE_WILDCARD_ACTIONS = (
    "s3:GetObject*",
    "s3:GetBucket*",
    "s3:List*",
    "s3:DeleteObject*",
    "s3:Abort*",
    "kms:ReEncrypt*",
    "kms:GenerateDataKey*",
)
# Resource-name wildcards that are not objects under a prefix: (part of the ARN, reason).
SPECIFIC_WILDCARDS = (
    (
        ":instance/*",
        "ec2:AssociateAddress onto a coturn relay's own instance, whose id is not known at synth; a condition "
        "limits it to instances of the relays' groups (tag aws:autoscaling:groupName) and the addresses are named",
    ),
    (
        ":autoScalingGroup:*:autoScalingGroupName/",
        "An Auto Scaling group's ARN by name: AWS makes the id in its middle when it creates the group, so the "
        "id is a wildcard; the name after it is fixed (gpu_fleet.group_names), so it is exactly one group",
    ),
)
RESOURCE_WILDCARD_REASON = (
    "A wildcard in a resource name only (objects under one prefix of one bucket, one log group's streams, one "
    "project's report groups); the actions on it are named"
)

# stack part -> {acknowledged rule: reason}
REASONS: dict[str, dict[str, str]] = {
    "*": {
        f"{HIPAA}IAMNoInlinePolicy": _INLINE,
    },
    "network": {
        f"{HIPAA}VPCNoUnrestrictedRouteToIGW": (
            "Only the public subnets route to the internet gateway: they hold the NLB, the NAT gateways and the "
            "coturn relays, which must be reachable by players; everything else is in private subnets"
        ),
    },
    "data": {
        f"{AS}SMG4": (
            "No rotation Lambda: these are shared secrets whose rotation needs both sides to accept two values "
            "for a while (docs/deploy.md, Rotating secrets); operators rotate them with that procedure"
        ),
        f"{HIPAA}SecretsManagerRotationEnabled": "Same as AwsSolutions-SMG4: rotated by the two-value procedure",
        f"{HIPAA}SecretsManagerUsingKMSKey": (
            "Encrypted under Secrets Manager's AWS managed key, usable only through Secrets Manager by roles IAM "
            "allows; a customer managed key would need every reader's role in one key policy across stacks"
        ),
        f"{HIPAA}S3BucketReplicationEnabled": (
            "A stage lives in one region; buckets are versioned and retained. Cross-region replication is an "
            "account-level disaster-recovery choice left to the operator"
        ),
        f"{HIPAA}S3DefaultEncryptionKMS": (
            "The server-access-log and load-balancer-log buckets: S3 and ELB log delivery only write under "
            "S3-managed keys (SSE-S3); every other bucket uses the stage's KMS key"
        ),
    },
    "control": {
        f"{AS}EC23": (
            "The NLB's group is open on the player, streamer and matchmaker ports by design (a public service); "
            "the tasks' group admits only the VPC's range, which cdk-nag cannot read from a token"
        ),
        f"{AS}ECS2": "The environment holds only non-secret settings; every secret is injected from Secrets Manager",
        f"{AS}IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/AmazonECSInfrastructureRolePolicyForLoadBalancers]": (
            "ECS's blue/green switch needs this AWS-maintained policy to move listeners between target groups"
        ),
        f"{AS}IAM5[Resource::*]": (
            "ecr:GetAuthorizationToken, which the execution role needs to pull images, has no resource type"
        ),
        f"{HIPAA}EC2RestrictedCommonPorts": "The tasks' group admits 8080-9999 from the VPC's range only",
        f"{HIPAA}EC2RestrictedSSH": "The tasks' group admits no SSH: 8080-9999 from the VPC's range only",
        f"{HIPAA}ELBv2ACMCertificateRequired": (
            "TCP pass-through keeps WebSocket sessions unbroken across the NLB; media is DTLS-SRTP end to end. "
            "TLS for signalling on the NLB (a certificate per stage) is a follow-up listed in docs/deploy.md"
        ),
    },
    "turn": {
        f"{AS}EC23": "TURN must be reachable by any player: its listener and relay ports are open by design",
        f"{AS}AS3": "Scaling events are visible in the group's CloudWatch metrics (all group metrics are on)",
        f"{AS}IAM5[Resource::*]": (
            "ecr:GetAuthorizationToken and the SSM agent's Session Manager channel actions (ssmmessages:*Channel, "
            "ec2messages:*, ssm:UpdateInstanceInformation, each named) have no resource type"
        ),
    },
    "gpu": {
        f"{AS}EC23": "The hosts' group admits only the VPC's range, which cdk-nag cannot read from a token",
        f"{AS}AS3": "Scaling events are visible in the groups' CloudWatch metrics (all group metrics are on)",
        f"{AS}EC26": (
            "The launch template's root volume is encrypted (Encrypted=true); cdk-nag does not follow a "
            "mixed-instances policy to its launch template"
        ),
        f"{HIPAA}EC2IMDSv2Enabled": (
            "The launch template requires IMDSv2 (HttpTokens=required, asserted in the tests); cdk-nag does not "
            "follow a mixed-instances policy to its launch template"
        ),
        f"{AS}IAM5[Resource::*]": (
            "ecr:GetAuthorizationToken, cloudwatch:PutMetricData and the SSM agent's Session Manager channel "
            "actions (named, no ssm:GetParameter) have no resource type; PutMetricData is "
            "limited to the pixelfleet namespace by a condition. The agent-token function's role has the five "
            "network-interface actions Lambda needs to run a function in the VPC, which take no resource either"
        ),
        f"{HIPAA}EC2RestrictedCommonPorts": (
            "The hosts' group admits only the VPC's range (agent metrics, relayed media)"
        ),
        f"{HIPAA}EC2RestrictedSSH": (
            "The hosts' group admits no SSH from outside the VPC; Session Manager is the way in"
        ),
    },
    "autoscale": {
        f"{AS}IAM5[Resource::*]": (
            "autoscaling:DescribeAutoScalingGroups and DescribeScalingActivities have no resource-level "
            "permissions (the changing actions name the pools' groups), nor has ecr:GetAuthorizationToken, which "
            "the execution role needs to pull the image"
        ),
        f"{AS}ECS2": (
            "The environment holds the pool's autoscaler config (group names, bounds, the notice queue's URL) and "
            "the matchmaker's URL, none secret; the admin token is injected from Secrets Manager"
        ),
        f"{AS}SQS3": (
            "The autoscaler deletes every notice it reads, of any kind, readable or not, so no message would ever "
            "reach a dead-letter queue; a notice is of use for two minutes and the queue keeps it fifteen"
        ),
    },
    "pipeline": {
        **{
            f"{AS}IAM5[Action::{action}]": (
                "CodePipeline and CodeBuild's own grants on the pipeline's artifact bucket and key (build "
                "artifacts, not player data); the runtime roles (tasks, hosts) use named actions"
            )
            for action in PIPELINE_WILDCARD_ACTIONS
        },
        f"{AS}IAM5[Resource::*]": (
            "ecr:GetAuthorizationToken (image builds) and ECS's DescribeServices/DescribeTaskDefinition/"
            "RegisterTaskDefinition (the deploy action) have no resource-level permissions"
        ),
        f"{HIPAA}CodeBuildProjectSourceRepoUrl": (
            "The projects take their source from CodePipeline, not from a repository URL with credentials"
        ),
    },
}


def reasons_for(stack: Stack) -> dict[str, str]:
    part = stack.stack_name.split("-", 2)[-1]
    family = part.split("-", 1)[0]  # gpu-<pool> -> gpu
    return {**REASONS["*"], **REASONS.get(family, {})}


def _nag_text(value: Any) -> str:
    """A resolved ARN as cdk-nag prints it in a finding id."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and len(value) == 1:
        (fn, arg), *_ = value.items()
        if fn == "Fn::Join":
            return str(arg[0]).join(_nag_text(part) for part in arg[1])
        if fn == "Ref":
            return f"<{arg}>"
        if fn == "Fn::GetAtt":
            return f"<{arg[0]}.{arg[1]}>"
        if fn == "Fn::ImportValue":
            return _nag_text(arg)
    return json.dumps(value)


def resource_wildcards(stack: Stack) -> set[str]:
    """Every resource with a ``*`` in the stack's IAM policies, spelt as cdk-nag's finding ids."""
    found: set[str] = set()
    for node in stack.node.find_all():
        if not isinstance(node, iam.CfnPolicy):
            continue
        document = stack.resolve(node.policy_document)
        for statement in document.get("Statement", []):
            resources = statement.get("Resource", [])
            for resource in resources if isinstance(resources, list) else [resources]:
                text = _nag_text(resource)
                if "*" in text and text != "*":
                    found.add(f"{AS}IAM5[Resource::{text}]")
    return found


def suppress(stack: Stack) -> None:
    """Acknowledge this stack's listed findings, and resource-name wildcards with their reason."""
    reasons = reasons_for(stack)
    for finding in resource_wildcards(stack):
        specific = [reason for part, reason in SPECIFIC_WILDCARDS if part in finding]
        reasons[finding] = specific[0] if specific else RESOURCE_WILDCARD_REASON
    for rule, reason in reasons.items():
        Validations.of(stack).acknowledge(Acknowledgment(id=rule, reason=reason))
