"""The delivery pipeline: source -> build the three images (and the UE build, when the stage
names a UE build image) -> ``cdk deploy --all -c imageTag=<the tag just pushed>``.

The control-plane and agent images are built on x86_64 (Fargate tasks and G5/G6 hosts); the
coturn image on an Arm build host, for the Graviton relays (turn_relay.TURN_ARCH). Every image
is tagged with the commit (the repositories are immutable); the Images action exports that
tag and the Deploy action hands it to the CDK app as context, so the control plane, the GPU
launch templates and the relays all move to the images of one commit, and a ``cdk deploy``
by hand with the same ``-c imageTag`` changes nothing. The services' blue/green strategy
(control_plane.py) does the switch and the rollback.

The source is a CodeStar connection when ``source_connection_arn`` is set, else a zip the
operator uploads to the artifacts bucket (``source/pixelfleet.zip``), so the app stays
account-agnostic. The pipeline refers to no application stack: it is deployed first, before
any image exists (docs/deploy.md, "First deploy").
"""

from __future__ import annotations

from typing import Any

from aws_cdk import Duration, Stack
from aws_cdk import aws_codebuild as codebuild
from aws_cdk import aws_codepipeline as codepipeline
from aws_cdk import aws_codepipeline_actions as actions
from aws_cdk import aws_iam as iam
from constructs import Construct

from pixelfleet_deploy.config import StageConfig
from pixelfleet_deploy.data import IMAGES, DataStack
from pixelfleet_deploy.turn_relay import TURN_ARCH

SOURCE_KEY = "source/pixelfleet.zip"
COMMIT_TAG = "TAG=${CODEBUILD_RESOLVED_SOURCE_VERSION:0:12}"
# the roles `cdk bootstrap` makes (default qualifier) that `cdk deploy` assumes
BOOTSTRAP_ROLES = ("deploy", "file-publishing", "image-publishing", "lookup")
# The control plane's image carries boto3 (the `aws` extra) in the cloud: the matchmaker
# writes its session records to DynamoDB, and the autoscaler drives the GPU groups.
BUILD_ARGS = {"control-plane": " --build-arg EXTRAS=aws"}


def image_build_spec(registry: str, repositories: dict[str, str]) -> dict[str, Any]:
    """docker build + push of these images, tagged with the commit; the tag is exported as
    ``TAG`` for the Deploy action."""
    builds = [
        f"docker build -f deploy/docker/{name}.Dockerfile{BUILD_ARGS.get(name, '')} -t {uri}:$TAG ."
        for name, uri in repositories.items()
    ]
    pushes = [f"docker push {uri}:$TAG" for uri in repositories.values()]
    return {
        "version": "0.2",
        "env": {"exported-variables": ["TAG"]},
        "phases": {
            "pre_build": {
                "commands": [
                    COMMIT_TAG,
                    f"aws ecr get-login-password | docker login --username AWS --password-stdin {registry}",
                ]
            },
            "build": {"commands": builds},
            "post_build": {"commands": pushes},
        },
    }


def deploy_spec(stage: str) -> dict[str, Any]:
    """``cdk deploy`` of every stack of the stage with the images just pushed (``IMAGE_TAG``)."""
    return {
        "version": "0.2",
        "phases": {
            "install": {
                "commands": [
                    "npm install -g aws-cdk@2",
                    "python3 -m venv /tmp/venv && /tmp/venv/bin/pip install -q -e '.[deploy]'",
                ]
            },
            "build": {
                "commands": [
                    'test -n "$IMAGE_TAG"',
                    "cd deploy/cdk && PATH=/tmp/venv/bin:$PATH cdk deploy --all --require-approval never"
                    f' -c stage={stage} -c imageTag="$IMAGE_TAG"',
                ]
            },
        },
    }


def ue_build_spec(bucket: str) -> dict[str, Any]:
    """Package the UE project inside the UE build container and store it for the GPU hosts."""
    return {
        "version": "0.2",
        "phases": {
            "build": {
                "commands": [
                    "RunUAT.sh BuildCookRun -project=$PWD/ue/$UE_PROJECT.uproject -platform=Linux"
                    " -clientconfig=Shipping -build -cook -stage -package -archive -archivedirectory=$PWD/out",
                    COMMIT_TAG,
                    "tar -C out -czf build.tgz .",
                    f"aws s3 cp build.tgz s3://{bucket}/builds/$UE_PROJECT/$TAG.tgz",
                ]
            }
        },
    }


class PipelineStack(Stack):
    def __init__(self, scope: Construct, id: str, *, stage: StageConfig, data: DataStack, **kwargs: Any) -> None:
        super().__init__(scope, id, **kwargs)
        artifacts = data.imported(self, "artifacts")
        source_out = codepipeline.Artifact("Source")
        source: actions.Action
        if stage.source_connection_arn:
            source = actions.CodeStarConnectionsSourceAction(
                action_name="Source",
                connection_arn=stage.source_connection_arn,
                owner=stage.source_repository.split("/")[0],
                repo=stage.source_repository.split("/")[-1],
                branch=stage.source_branch,
                output=source_out,
            )
        else:
            source = actions.S3SourceAction(
                action_name="Source",
                bucket=artifacts,
                bucket_key=SOURCE_KEY,
                output=source_out,
                trigger=actions.S3Trigger.NONE,
            )
        repositories = {name: data.repositories[name].repository_uri for name in IMAGES}
        registry = f"{self.account}.dkr.ecr.{self.region}.amazonaws.com"
        # (project id, images, build host, size); coturn's host matches the relays' architecture
        # (Arm build hosts come in SMALL and LARGE)
        turn_build = (
            (codebuild.LinuxArmBuildImage.AMAZON_LINUX_2023_STANDARD_3_0, codebuild.ComputeType.LARGE)
            if TURN_ARCH == "arm64"
            else (codebuild.LinuxBuildImage.STANDARD_7_0, codebuild.ComputeType.MEDIUM)
        )
        builds = (
            (
                "Images",
                ("control-plane", "agent"),
                codebuild.LinuxBuildImage.STANDARD_7_0,
                codebuild.ComputeType.MEDIUM,
            ),
            ("TurnImage", ("coturn",), *turn_build),
        )
        self.image_projects: dict[str, codebuild.PipelineProject] = {}
        build_actions: list[actions.CodeBuildAction] = []
        for project_id, names, build_image, compute_type in builds:
            project = codebuild.PipelineProject(
                self,
                project_id,
                description=f"build and push the {', '.join(names)} image(s)",
                environment=codebuild.BuildEnvironment(
                    build_image=build_image, compute_type=compute_type, privileged=True
                ),
                build_spec=codebuild.BuildSpec.from_object(
                    image_build_spec(registry, {name: repositories[name] for name in names})
                ),
                encryption_key=data.key,
                timeout=Duration.minutes(30),
            )
            for name in names:
                data.repositories[name].grant_pull_push(project)
            # GetAuthorizationToken has no resource type: it can only be granted on "*".
            project.add_to_role_policy(iam.PolicyStatement(actions=["ecr:GetAuthorizationToken"], resources=["*"]))
            self.image_projects[project_id] = project
            build_actions.append(
                actions.CodeBuildAction(
                    action_name=project_id, project=project, input=source_out, variables_namespace=project_id
                )
            )
        images = build_actions[0]
        if stage.ue_build_image:  # without a UE build image there is nothing to package it with
            build_actions.append(self._ue_build(stage, data, artifacts, source_out))

        self.deploy = codebuild.PipelineProject(
            self,
            "Deploy",
            description=f"cdk deploy every stack of stage {stage.name} with the images just built",
            environment=codebuild.BuildEnvironment(
                build_image=codebuild.LinuxBuildImage.STANDARD_7_0, compute_type=codebuild.ComputeType.MEDIUM
            ),
            build_spec=codebuild.BuildSpec.from_object(deploy_spec(stage.name)),
            encryption_key=data.key,
            timeout=Duration.minutes(90),
        )
        # The CDK CLI deploys through the roles `cdk bootstrap` made; it needs nothing else.
        self.deploy.add_to_role_policy(
            iam.PolicyStatement(
                actions=["sts:AssumeRole"],
                resources=[
                    f"arn:{self.partition}:iam::{self.account}:role/cdk-hnb659fds-{kind}-role-{self.account}-{self.region}"
                    for kind in BOOTSTRAP_ROLES
                ],
            )
        )
        self.pipeline = codepipeline.Pipeline(
            self,
            "Pipeline",
            pipeline_type=codepipeline.PipelineType.V2,
            artifact_bucket=artifacts,
            restart_execution_on_update=True,
            stages=[
                codepipeline.StageProps(stage_name="Source", actions=[source]),
                codepipeline.StageProps(stage_name="Build", actions=build_actions),
                codepipeline.StageProps(
                    stage_name="Deploy",
                    actions=[
                        actions.CodeBuildAction(
                            action_name="Deploy",
                            project=self.deploy,
                            input=source_out,
                            environment_variables={
                                "IMAGE_TAG": codebuild.BuildEnvironmentVariable(value=images.variable("TAG"))
                            },
                        )
                    ],
                ),
            ],
        )

    def _ue_build(
        self, stage: StageConfig, data: DataStack, artifacts: Any, source_out: codepipeline.Artifact
    ) -> actions.CodeBuildAction:
        ue_build = codebuild.PipelineProject(
            self,
            "UeBuild",
            description="package the UE project in the UE build container",
            environment=codebuild.BuildEnvironment(
                build_image=codebuild.LinuxBuildImage.from_docker_registry(stage.ue_build_image),
                compute_type=codebuild.ComputeType.X2_LARGE,
                environment_variables={"UE_PROJECT": codebuild.BuildEnvironmentVariable(value="Game")},
            ),
            build_spec=codebuild.BuildSpec.from_object(ue_build_spec(artifacts.bucket_name)),
            encryption_key=data.key,
            timeout=Duration.hours(4),
        )
        ue_build.add_to_role_policy(
            iam.PolicyStatement(actions=["s3:PutObject"], resources=[artifacts.arn_for_objects("builds/*")])
        )
        return actions.CodeBuildAction(action_name="UeBuild", project=ue_build, input=source_out)
