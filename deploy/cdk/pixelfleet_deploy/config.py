"""A stage's parameters, read from CDK context (``cdk.json`` or ``-c``), checked once.

Every stack takes one :class:`StageConfig`, so a stage is reproducible from its context
alone and a typo stops ``cdk synth`` with one line instead of half a deployment.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

GPU_FAMILIES = ("g5", "g6", "g6e")
_INSTANCE = re.compile(r"^(?P<family>[a-z][a-z0-9]*)\.(?P<size>[0-9]*x?large|medium|small|micro)$")
_NAME = re.compile(r"^[a-z][a-z0-9-]{0,19}$")
_GRAVITON = re.compile(r"^[a-z]+[0-9]+g[a-z0-9-]*\.")  # c6gn, c7g, m7g, t4g: Arm, like the coturn image
_IMAGE_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")  # ECR's tag syntax
_TENANT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# The autoscalers' task (autoscaler.py): one for every pool, each stepping once a minute.
AUTOSCALER_CPU, AUTOSCALER_MEMORY_MIB = 256, 512


class ConfigError(ValueError):
    """A context value that cannot make a stage."""


@dataclasses.dataclass(frozen=True)
class GpuPool:
    """One GPU fleet: an On-Demand group with a warm pool, and a Spot group for bursts."""

    name: str = "default"
    app: str = "default"
    tenant: str = "default"  # the tenant the pool's slots serve, and the only one its hosts' agent tokens name
    # the On-Demand (warm-pooled) group runs the first; the Spot group any of them
    instance_types: tuple[str, ...] = ("g5.xlarge", "g6.xlarge")
    on_demand_min: int = 1
    on_demand_max: int = 8
    warm_pool_size: int = 2
    spot_max: int = 16
    slots_per_host: int = 1
    image_id_ssm_parameter: str = (
        "/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-ubuntu-22.04/latest/ami-id"
    )
    root_volume_gb: int = 100


@dataclasses.dataclass(frozen=True)
class StageConfig:
    """Everything that differs between stages; the defaults are a small production stage."""

    name: str = "dev"
    max_azs: int = 2
    nat_gateways: int = 2
    redis_node_type: str = "cache.r7g.large"
    redis_shards: int = 1
    redis_replicas_per_shard: int = 1
    # the matchmaker's PIXELFLEET_MATCHMAKER__REDIS_WAIT_REPLICAS: a claim is confirmed only
    # once this many replicas of its shard hold it; 0 = not waited for
    redis_wait_replicas: int = 0
    redis_port: int = 6390
    signaling_tasks: int = 2
    signaling_cpu: int = 1024
    signaling_memory_mib: int = 2048
    matchmaker_tasks: int = 2
    matchmaker_cpu: int = 512
    matchmaker_memory_mib: int = 1024
    drain_s: int = 300
    nlb_idle_timeout_s: int = 3600
    turn_instance_type: str = "c6gn.medium"
    turn_hosts: int = 2
    turn_relay_min_port: int = 49152
    turn_relay_max_port: int = 65535
    # the images' tag (the commit the pipeline built, `-c imageTag=...`); "" = not built yet:
    # only the network, data and pipeline stacks (docs/deploy.md, "First deploy")
    image_tag: str = ""
    source_connection_arn: str = ""
    source_repository: str = "example/pixelfleet"
    source_branch: str = "main"
    ue_build_image: str = ""
    alarm_email: str = ""
    agent_token_ttl_s: int = 31536000  # lifetime of a host's agent token (minted at each launch)
    host_reads_own_token_only: bool = True  # IAM condition: a host reads its own token, not its pool's
    pools: tuple[GpuPool, ...] = (GpuPool(),)

    def __post_init__(self) -> None:
        check(_NAME.match(self.name) is not None, f"stage name {self.name!r}: lowercase letters, digits, '-', 1-20")
        check(2 <= self.max_azs <= 6, f"max_azs {self.max_azs}: 2..6 (the control plane spans AZs)")
        check(0 <= self.nat_gateways <= self.max_azs, f"nat_gateways {self.nat_gateways}: 0..max_azs")
        check(1 <= self.redis_shards <= 500, f"redis_shards {self.redis_shards}: 1..500")
        check(1 <= self.redis_replicas_per_shard <= 5, "redis_replicas_per_shard: 1..5 (failover needs one)")
        check(
            0 <= self.redis_wait_replicas < self.redis_replicas_per_shard,
            f"redis_wait_replicas {self.redis_wait_replicas}: 0..redis_replicas_per_shard - 1 (a shard that"
            " failed over has a replica less until ElastiCache replaces it, and writes must go on)",
        )
        check(self.redis_port != 6379 and 1024 <= self.redis_port <= 65535, "redis_port: 1024..65535, not 6379")
        check(60 <= self.nlb_idle_timeout_s <= 6000, f"nlb_idle_timeout_s {self.nlb_idle_timeout_s}: 60..6000")
        check(0 <= self.drain_s <= 3600, f"drain_s {self.drain_s}: 0..3600 (deregistration delay)")
        check(self.signaling_tasks >= 1 and self.matchmaker_tasks >= 1, "signaling_tasks, matchmaker_tasks: >= 1")
        check(
            1024 <= self.turn_relay_min_port < self.turn_relay_max_port <= 65535,
            "turn relay ports: 1024 <= min < max <= 65535",
        )
        check(self.turn_hosts >= 1, "turn_hosts: >= 1")
        check(
            self.image_tag == "" or (_IMAGE_TAG.match(self.image_tag) is not None and self.image_tag != "latest"),
            f"image_tag {self.image_tag!r}: a tag the pipeline pushed (the commit, 12 hex digits); the repositories"
            " are immutable and nothing pushes 'latest'",
        )
        check(
            _GRAVITON.match(self.turn_instance_type) is not None,
            f"turn_instance_type {self.turn_instance_type!r}: an Arm (Graviton) type such as c6gn.medium;"
            " the pipeline builds the coturn image for arm64",
        )
        check(3600 <= self.agent_token_ttl_s <= 5 * 31536000, "agent_token_ttl_s: 3600..157680000 (5 years)")
        check(len(self.pools) >= 1, "pools: at least one GPU pool")
        names = [p.name for p in self.pools]
        check(len(set(names)) == len(names), f"pools: duplicate names {names}")
        for pool in self.pools:
            check_pool(pool)


def check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def check_pool(pool: GpuPool) -> None:
    where = f"pool {pool.name!r}"
    check(_NAME.match(pool.name) is not None, f"{where}: name: lowercase letters, digits, '-', 1-20")
    check(_TENANT.match(pool.tenant) is not None, f"{where}: tenant: letters, digits, '.', '_', '-', 1-64")
    # the app also goes into the alarms' Metrics Insights queries (WHERE App = '...')
    check(_TENANT.match(pool.app) is not None, f"{where}: app: letters, digits, '.', '_', '-', 1-64")
    check(len(pool.instance_types) >= 1, f"{where}: instance_types: at least one")
    for t in pool.instance_types:
        m = _INSTANCE.match(t)
        check(m is not None and m["family"] in GPU_FAMILIES, f"{where}: {t!r} is not a {'/'.join(GPU_FAMILIES)} type")
    check(0 <= pool.on_demand_min <= pool.on_demand_max, f"{where}: 0 <= on_demand_min <= on_demand_max")
    check(0 <= pool.warm_pool_size <= 100, f"{where}: warm_pool_size 0..100")
    check(pool.spot_max >= 0, f"{where}: spot_max >= 0")
    check(1 <= pool.slots_per_host <= 16, f"{where}: slots_per_host 1..16")
    check(30 <= pool.root_volume_gb <= 16384, f"{where}: root_volume_gb 30..16384")


def _build(cls: type[Any], raw: Mapping[str, Any], where: str) -> Any:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: expected an object, got {type(raw).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown keys {unknown}; known: {sorted(fields)}")
    values: dict[str, Any] = {}
    defaults = cls()
    for key, value in raw.items():
        default = getattr(defaults, key)
        if key == "pools":
            if not isinstance(value, list):
                raise ConfigError(f"{where}.pools: expected a list")
            values[key] = tuple(_build(GpuPool, p, f"{where}.pools[{i}]") for i, p in enumerate(value))
        elif isinstance(default, tuple):
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{where}.{key}: expected a list of strings")
            values[key] = tuple(value)
        elif type(value) is not type(default):
            raise ConfigError(f"{where}.{key}: expected {type(default).__name__}, got {type(value).__name__}")
        else:
            values[key] = value
    return cls(**values)


def stage_from_context(stages: Any, name: str) -> StageConfig:
    """The stage ``name`` from the ``pixelfleet:stages`` context object."""
    if stages is None:
        stages = {}
    if not isinstance(stages, Mapping):
        raise ConfigError("context pixelfleet:stages: expected an object of stage name -> parameters")
    raw = dict(stages.get(name, {}))
    if name not in stages and name != "dev":
        raise ConfigError(f"stage {name!r} is not in context pixelfleet:stages (known: {sorted(stages)})")
    raw.setdefault("name", name)
    config: StageConfig = _build(StageConfig, raw, f"pixelfleet:stages.{name}")
    return config
