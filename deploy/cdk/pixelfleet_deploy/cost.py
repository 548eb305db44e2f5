"""The idle cost per hour of a stage: what it costs with no player connected.

Idle means the control plane, Redis, TURN and the network running, the On-Demand GPU
hosts at their minimum (their slots READY, waiting for players) and the warm pool's
stopped hosts, which bill only their disks. docs/deploy.md prints :func:`idle_cost`'s lines
with the arithmetic; a test checks the document against this function.

    cd deploy/cdk && python -m pixelfleet_deploy.cost           # the default parameters
    cd deploy/cdk && python -m pixelfleet_deploy.cost prod      # a stage of cdk.json
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

from pixelfleet_deploy.config import AUTOSCALER_CPU, AUTOSCALER_MEMORY_MIB, StageConfig, stage_from_context

HOURS_PER_MONTH = 730


@dataclasses.dataclass(frozen=True)
class Prices:
    """US East (N. Virginia) On-Demand list prices in USD, Linux; check them before relying on them."""

    instance_hour: tuple[tuple[str, float], ...] = (
        ("g5.xlarge", 1.006),
        ("g6.xlarge", 0.8048),
        ("c6gn.medium", 0.0432),
        ("cache.r7g.large", 0.219),
    )
    fargate_vcpu_hour: float = 0.04048
    fargate_gb_hour: float = 0.004445
    nlb_hour: float = 0.0225
    nlb_lcu_hour: float = 0.006
    accelerator_hour: float = 0.025
    nat_gateway_hour: float = 0.045
    public_ipv4_hour: float = 0.005  # every public IPv4 address, in use or not
    gp3_gb_month: float = 0.08

    def hourly(self, instance_type: str) -> float:
        for name, price in self.instance_hour:
            if name == instance_type:
                return price
        raise KeyError(f"no price for {instance_type}; add it to Prices.instance_hour")


@dataclasses.dataclass(frozen=True)
class Line:
    item: str
    arithmetic: str
    usd_per_hour: float


def idle_cost(stage: StageConfig, prices: Prices = Prices(), *, gpu_type: str = "g5.xlarge") -> list[Line]:
    """One line per billed item, the last one the total."""
    lines: list[Line] = []

    def fargate(name: str, tasks: int, cpu: int, mem_mib: int) -> None:
        vcpu, gb = cpu / 1024, mem_mib / 1024
        per = vcpu * prices.fargate_vcpu_hour + gb * prices.fargate_gb_hour
        lines.append(
            Line(
                f"{name} (Fargate)",
                f"{tasks} x ({vcpu:g} vCPU x {prices.fargate_vcpu_hour} + {gb:g} GB x {prices.fargate_gb_hour})",
                tasks * per,
            )
        )

    fargate("signalling", stage.signaling_tasks, stage.signaling_cpu, stage.signaling_memory_mib)
    fargate("matchmaker", stage.matchmaker_tasks, stage.matchmaker_cpu, stage.matchmaker_memory_mib)
    fargate("autoscalers, all pools", 1, AUTOSCALER_CPU, AUTOSCALER_MEMORY_MIB)
    nodes = stage.redis_shards * (1 + stage.redis_replicas_per_shard)
    redis = prices.hourly(stage.redis_node_type)
    lines.append(Line(f"Redis ({stage.redis_node_type})", f"{nodes} nodes x {redis}", nodes * redis))
    lines.append(
        Line(
            "Network Load Balancer",
            f"{prices.nlb_hour} + 1 LCU x {prices.nlb_lcu_hour}",
            prices.nlb_hour + prices.nlb_lcu_hour,
        )
    )
    lines.append(Line("Global Accelerator", "fixed fee", prices.accelerator_hour))
    lines.append(
        Line(
            "NAT gateways",
            f"{stage.nat_gateways} x {prices.nat_gateway_hour}",
            stage.nat_gateways * prices.nat_gateway_hour,
        )
    )
    turn = prices.hourly(stage.turn_instance_type)
    lines.append(Line(f"coturn ({stage.turn_instance_type})", f"{stage.turn_hosts} x {turn}", stage.turn_hosts * turn))
    # coturn's Elastic IPs, one per NAT gateway, and the internet-facing NLB's: one per zone
    # (its public subnets span max_azs zones)
    ips = stage.turn_hosts + stage.nat_gateways + stage.max_azs
    lines.append(
        Line(
            "public IPv4 addresses",
            f"({stage.turn_hosts} coturn + {stage.nat_gateways} NAT + {stage.max_azs} NLB, one per zone)"
            f" x {prices.public_ipv4_hour}",
            ips * prices.public_ipv4_hour,
        )
    )
    gpu = prices.hourly(gpu_type)
    for pool in stage.pools:
        disk = pool.root_volume_gb * prices.gp3_gb_month / HOURS_PER_MONTH
        running = pool.on_demand_min
        lines.append(
            Line(
                f"pool {pool.name}: running {gpu_type}",
                f"{running} x ({gpu} + {pool.root_volume_gb} GB x {prices.gp3_gb_month} / {HOURS_PER_MONTH})",
                running * (gpu + disk),
            )
        )
        lines.append(
            Line(
                f"pool {pool.name}: warm pool (stopped)",
                f"{pool.warm_pool_size} x {pool.root_volume_gb} GB x {prices.gp3_gb_month} / {HOURS_PER_MONTH}",
                pool.warm_pool_size * disk,
            )
        )
    lines.append(Line("total", "sum of the above", sum(line.usd_per_hour for line in lines)))
    return lines


def markdown_table(lines: list[Line]) -> str:
    rows = ["| item | arithmetic | USD per hour |", "|---|---|---:|"]
    rows += [f"| {line.item} | {line.arithmetic} | {line.usd_per_hour:.4f} |" for line in lines]
    return "\n".join(rows)


def main(argv: list[str]) -> int:
    """Print the idle cost table of the default parameters, or of a stage of ``cdk.json``."""
    stage = StageConfig()
    if argv:
        context = json.loads((Path(__file__).resolve().parents[1] / "cdk.json").read_text())["context"]
        stage = stage_from_context(context.get("pixelfleet:stages"), argv[0])
    print(markdown_table(idle_cost(stage)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
