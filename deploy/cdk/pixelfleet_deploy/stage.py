"""One stage = one set of stacks, named ``pixelfleet-<stage>-<part>``, wired together here."""

from __future__ import annotations

import dataclasses

from aws_cdk import App, Environment, Stack, Tags, Validations
from cdk_nag import AwsSolutionsChecks, HIPAASecurityChecks

from pixelfleet_deploy.autoscaler import AutoscalerStack
from pixelfleet_deploy.config import ConfigError, StageConfig
from pixelfleet_deploy.control_plane import MATCHMAKER_PORT, ControlPlaneStack
from pixelfleet_deploy.data import DataStack
from pixelfleet_deploy.gpu_fleet import GpuFleetStack
from pixelfleet_deploy.nag import suppress
from pixelfleet_deploy.network import NetworkStack
from pixelfleet_deploy.observability import ObservabilityStack
from pixelfleet_deploy.pipeline import PipelineStack
from pixelfleet_deploy.turn_relay import TurnStack


def new_app(outdir: str | None = None) -> App:
    """The App ``app.py`` and the tests synthesize into (one place for its options)."""
    return App(outdir=outdir)


@dataclasses.dataclass
class Stage:
    network: NetworkStack
    data: DataStack
    control: ControlPlaneStack
    turn: TurnStack
    fleets: dict[str, GpuFleetStack]
    autoscaler: AutoscalerStack
    observability: ObservabilityStack
    pipeline: PipelineStack

    def stacks(self) -> list[Stack]:
        return [
            self.network,
            self.data,
            self.control,
            self.turn,
            *self.fleets.values(),
            self.autoscaler,
            self.observability,
            self.pipeline,
        ]


@dataclasses.dataclass
class Bootstrap:
    """What a stage needs before any image exists: the pipeline that builds them."""

    network: NetworkStack
    data: DataStack
    pipeline: PipelineStack

    def stacks(self) -> list[Stack]:
        return [self.network, self.data, self.pipeline]


def _bootstrap(app: App, stage: StageConfig, env: Environment | None) -> Bootstrap:
    prefix = f"pixelfleet-{stage.name}"
    network = NetworkStack(app, f"{prefix}-network", stage=stage, env=env)
    data = DataStack(app, f"{prefix}-data", stage=stage, vpc=network.vpc, env=env)
    pipeline = PipelineStack(app, f"{prefix}-pipeline", stage=stage, data=data, env=env)
    return Bootstrap(network, data, pipeline)


def _checked(app: App, stacks: list[Stack], stage: StageConfig, hipaa: bool) -> None:
    for stack in stacks:
        Tags.of(stack).add("pixelfleet:stage", stage.name)
        suppress(stack)
    Validations.of(app).add_plugins(AwsSolutionsChecks(app, write_suppressions_to_cloud_formation=True))
    if hipaa:
        Validations.of(app).add_plugins(HIPAASecurityChecks(app, write_suppressions_to_cloud_formation=True))


def build_bootstrap(app: App, stage: StageConfig, env: Environment | None = None, *, hipaa: bool = True) -> Bootstrap:
    """The network, data and pipeline stacks only: the first deploy, before the pipeline has
    pushed the images the other stacks run (docs/deploy.md, "First deploy")."""
    result = _bootstrap(app, stage, env)
    _checked(app, result.stacks(), stage, hipaa)
    return result


def build_stage(app: App, stage: StageConfig, env: Environment | None = None, *, hipaa: bool = True) -> Stage:
    """Every stack of ``stage``, with cdk-nag's AwsSolutions (and HIPAA Security) checks on them."""
    if not stage.image_tag:
        raise ConfigError("image_tag: the stacks run the images of one tag (-c imageTag=...); none given")
    prefix = f"pixelfleet-{stage.name}"
    boot = _bootstrap(app, stage, env)
    network, data = boot.network, boot.data
    vpc = network.vpc
    turn = TurnStack(app, f"{prefix}-turn", stage=stage, vpc=vpc, data=data, env=env)
    control = ControlPlaneStack(app, f"{prefix}-control", stage=stage, vpc=vpc, data=data, turn_urls=turn.urls, env=env)
    # Agents reach the matchmaker, and their streamers signalling, through the NLB.
    matchmaker_url = f"http://{control.nlb.load_balancer_dns_name}:{MATCHMAKER_PORT}"
    fleets = {
        pool.name: GpuFleetStack(
            app,
            f"{prefix}-gpu-{pool.name}",
            stage=stage,
            pool=pool,
            vpc=vpc,
            data=data,
            matchmaker_url=matchmaker_url,
            signaling_host=control.nlb.load_balancer_dns_name,
            env=env,
        )
        for pool in stage.pools
    }
    # The pools' autoscalers: after the groups they drive exist (they name them, not import them).
    autoscaler = AutoscalerStack(
        app,
        f"{prefix}-autoscale",
        stage=stage,
        vpc=vpc,
        data=data,
        cluster=control.cluster,
        log_group=control.log_group,
        matchmaker_url=matchmaker_url,
        env=env,
    )
    for fleet in fleets.values():
        autoscaler.add_stack_dependency(fleet)
    observability = ObservabilityStack(
        app, f"{prefix}-observability", stage=stage, control=control, key=data.key, env=env
    )
    result = Stage(network, data, control, turn, fleets, autoscaler, observability, boot.pipeline)
    _checked(app, result.stacks(), stage, hipaa)
    return result
