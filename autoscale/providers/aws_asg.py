"""``aws-asg``: a pool as two EC2 Auto Scaling groups.

AWS refuses a warm pool on a group with Spot or mixed instances, so each pool has:

- an **On-Demand group** with a warm pool (instances stopped or hibernated with the UE
  build on disk, so a scale-out starts one instead of booting a fresh one): the base, and
  the fallback when Spot capacity is refused;
- a **Spot group** for bursts above the On-Demand group's ``MaxSize``.

The controller asks for N more hosts: the On-Demand group takes what fits under its max,
the Spot group the rest. A Spot scale-out that AWS refuses (a failed scaling activity:
no capacity, price too low) moves that many to the On-Demand group, up to
``on_demand_ceiling``. Hosts with live sessions are protected from scale-in; a drained,
empty host is terminated with the group's desired capacity decremented (an On-Demand one
returns to the warm pool when ``reuse_on_scale_in``). A Spot rebalance recommendation or
interruption warning marks that host draining: EventBridge delivers the event to an SQS
queue (``notice_queue_url``) that ``poll_notices`` reads every control step (or a caller
passes the event to ``spot_notice``); the controller then drains the host in the matchmaker
and terminates it once it is empty.

Host ids are instance ids: the agent on each instance registers with
``PIXELFLEET_AGENT__HOST_ID`` set to its instance id (docs/autoscaling.md).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import msgspec
import structlog

from autoscale.providers.base import ProviderHost

log = structlog.get_logger("autoscale.aws")

# Scaling-activity messages that mean "no Spot capacity for you now" (EC2's error codes).
SPOT_REFUSALS = (
    "InsufficientInstanceCapacity",
    "UnfulfillableCapacity",
    "SpotMaxPriceTooLow",
    "MaxSpotInstanceCountExceeded",
    "Could not launch Spot Instances",
)
# Lifecycle states of instances that are on their way out or parked in the warm pool.
_GONE = ("Terminating", "Terminated", "Detaching", "Detached", "Warmed")
SPOT_EVENTS = ("EC2 Spot Instance Interruption Warning", "EC2 Instance Rebalance Recommendation")


class AwsAsgSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    on_demand_group: str
    spot_group: str
    region: str = ""
    warm_pool_min: int = 0  # instances kept stopped in the On-Demand group's warm pool
    warm_pool_state: str = "Stopped"  # Stopped | Hibernated | Running
    reuse_on_scale_in: bool = True  # a terminated On-Demand host goes back to the warm pool
    on_demand_ceiling: int = 0  # Spot fallback may raise the On-Demand max up to this (0: no fallback)
    notice_queue_url: str = ""  # SQS queue an EventBridge rule sends Spot notices to ("": none)

    def __post_init__(self) -> None:
        if self.warm_pool_state not in ("Stopped", "Hibernated", "Running"):
            raise ValueError(f"warm_pool_state must be Stopped, Hibernated or Running, not {self.warm_pool_state!r}")


def _default_client(settings: AwsAsgSettings) -> Any:
    import boto3

    return boto3.client("autoscaling", **({"region_name": settings.region} if settings.region else {}))


def _default_sqs_client(settings: AwsAsgSettings) -> Any:
    import boto3

    return boto3.client("sqs", **({"region_name": settings.region} if settings.region else {}))


def _live(group: dict[str, Any]) -> int:
    return sum(1 for i in group.get("Instances", []) if not i["LifecycleState"].startswith(_GONE))


def _outstanding(group: dict[str, Any]) -> int:
    """Instances the group was asked for and does not have (yet): refused or still coming."""
    return max(0, int(group["DesiredCapacity"]) - _live(group))


class AwsAsgProvider:
    name = "aws-asg"

    def __init__(
        self,
        settings: AwsAsgSettings,
        client_factory: Callable[[AwsAsgSettings], Any] = _default_client,
        sqs_factory: Callable[[AwsAsgSettings], Any] = _default_sqs_client,
    ):
        self.settings = settings
        self.client = client_factory(settings)
        self.sqs = sqs_factory(settings) if settings.notice_queue_url else None
        self._protected: dict[str, bool] = {}
        self._notices: set[str] = set()
        self._spot_asked_at: float | None = None
        self._spot_asked = 0

    async def _call(self, method: str, **kwargs: Any) -> Any:
        return await asyncio.to_thread(getattr(self.client, method), **kwargs)

    async def _groups(self) -> dict[str, dict[str, Any]]:
        s = self.settings
        reply = await self._call(
            "describe_auto_scaling_groups", AutoScalingGroupNames=[s.on_demand_group, s.spot_group]
        )
        groups = {g["AutoScalingGroupName"]: g for g in reply["AutoScalingGroups"]}
        missing = {s.on_demand_group, s.spot_group} - set(groups)
        if missing:
            raise ValueError(f"aws-asg: no Auto Scaling group named {', '.join(sorted(missing))}")
        return groups

    async def ensure_warm_pool(self) -> None:
        """The On-Demand group's warm pool as configured (only that group may have one)."""
        s = self.settings
        if s.warm_pool_min <= 0:
            return
        od = (await self._groups())[s.on_demand_group]
        if "MixedInstancesPolicy" in od:  # AWS refuses it; moto does not, so say so here
            raise ValueError(
                f"aws-asg: {s.on_demand_group} has a mixed instances policy, and AWS refuses a warm pool on such a"
                " group: give it a launch template of one instance type"
            )
        await self._call(
            "put_warm_pool",
            AutoScalingGroupName=s.on_demand_group,
            MinSize=s.warm_pool_min,
            PoolState=s.warm_pool_state,
            InstanceReusePolicy={"ReuseOnScaleIn": s.reuse_on_scale_in},
        )

    async def hosts(self) -> list[ProviderHost]:
        groups = await self._groups()
        out = []
        seen: set[str] = set()
        for name, group in groups.items():
            for inst in group.get("Instances", []):
                if inst["LifecycleState"].startswith(_GONE):
                    continue
                iid = inst["InstanceId"]
                seen.add(iid)
                out.append(
                    ProviderHost(host_id=iid, spot=name == self.settings.spot_group, draining=iid in self._notices)
                )
                self._protected.setdefault(iid, bool(inst.get("ProtectedFromScaleIn", False)))
        self._notices &= seen  # reclaimed, or another group's instance (the rule may cover the account)
        return out

    async def launch(self, count: int) -> list[str]:
        """Raise desired capacities; instance ids appear in ``hosts`` as AWS starts them.

        Idempotent over refused or slow capacity: instances asked for and not yet there
        (desired capacity above the live instances, e.g. Spot refused) are not in ``hosts``,
        so the controller asks for them again each step; they are taken off ``count`` here
        instead of being asked for twice."""
        if count <= 0:
            return []
        s = self.settings
        await self._fall_back_if_spot_refused()
        groups = await self._groups()
        od, spot = groups[s.on_demand_group], groups[s.spot_group]
        outstanding = _outstanding(od) + _outstanding(spot)
        if outstanding:
            log.info("aws_launch_outstanding", wanted=count, outstanding=outstanding)
            count -= min(count, outstanding)
            if not count:
                return []
        to_od = min(count, max(0, od["MaxSize"] - od["DesiredCapacity"]))
        to_spot = count - to_od
        if to_od:
            await self._set_desired(s.on_demand_group, od["DesiredCapacity"] + to_od)
        if to_spot:
            room = max(0, spot["MaxSize"] - spot["DesiredCapacity"])
            if to_spot > room:
                log.warning("aws_spot_group_full", wanted=to_spot, room=room)
                to_spot = room
            if to_spot:
                await self._set_desired(s.spot_group, spot["DesiredCapacity"] + to_spot)
                self._spot_asked_at, self._spot_asked = time.time(), to_spot
        log.info("aws_launch", on_demand=to_od, spot=to_spot)
        return []

    async def _set_desired(self, group: str, desired: int) -> None:
        await self._call(
            "set_desired_capacity", AutoScalingGroupName=group, DesiredCapacity=desired, HonorCooldown=False
        )

    async def spot_refused(self) -> bool:
        """Did the Spot group's scaling since our last request fail for want of capacity?"""
        if self._spot_asked_at is None:
            return False
        reply = await self._call("describe_scaling_activities", AutoScalingGroupName=self.settings.spot_group)
        for act in reply.get("Activities", []):
            start = act.get("StartTime")
            started = start.timestamp() if hasattr(start, "timestamp") else float(start or 0)
            message = f"{act.get('StatusMessage', '')} {act.get('Description', '')}"
            if (
                act.get("StatusCode") in ("Failed", "Cancelled")
                and started >= self._spot_asked_at - 1
                and any(code in message for code in SPOT_REFUSALS)
            ):
                return True
        return False

    async def _fall_back_if_spot_refused(self) -> None:
        s = self.settings
        if not (s.on_demand_ceiling and self._spot_asked and await self.spot_refused()):
            return
        groups = await self._groups()
        od, spot = groups[s.on_demand_group], groups[s.spot_group]
        # Only capacity Spot never delivered moves: lowering Spot desired below its live
        # instances would let the group pick one to terminate.
        refused = min(self._spot_asked, _outstanding(spot))
        moved = min(refused, max(0, s.on_demand_ceiling - od["DesiredCapacity"]))
        if moved:
            new_max = max(od["MaxSize"], od["DesiredCapacity"] + moved)
            await self._call("update_auto_scaling_group", AutoScalingGroupName=s.on_demand_group, MaxSize=new_max)
            await self._set_desired(s.on_demand_group, od["DesiredCapacity"] + moved)
            await self._set_desired(s.spot_group, max(spot["MinSize"], spot["DesiredCapacity"] - moved))
        log.warning("aws_spot_refused_fallback_on_demand", moved=moved)
        self._spot_asked_at, self._spot_asked = None, 0

    async def terminate(self, host_id: str) -> None:
        if self._protected.get(host_id):
            await self._protect([host_id], False)
        await self._call(
            "terminate_instance_in_auto_scaling_group", InstanceId=host_id, ShouldDecrementDesiredCapacity=True
        )
        self._protected.pop(host_id, None)
        self._notices.discard(host_id)
        log.info("aws_terminated", host=host_id)

    async def protect(self, busy: set[str]) -> None:
        """Instance protection on exactly the hosts with live sessions (changes only)."""
        on = sorted(h for h in busy if not self._protected.get(h))
        off = sorted(h for h, p in self._protected.items() if p and h not in busy)
        if on:
            await self._protect(on, True)
        if off:
            await self._protect(off, False)

    async def _protect(self, ids: list[str], protected: bool) -> None:
        groups = await self._groups()
        for name, group in groups.items():
            mine = [i["InstanceId"] for i in group.get("Instances", []) if i["InstanceId"] in ids]
            if mine:
                await self._call(
                    "set_instance_protection",
                    AutoScalingGroupName=name,
                    InstanceIds=mine,
                    ProtectedFromScaleIn=protected,
                )
                for iid in mine:
                    self._protected[iid] = protected

    def spot_notice(self, event: dict[str, Any]) -> str | None:
        """An EventBridge Spot interruption warning or rebalance recommendation: the host
        to drain (its instance id), or None for any other event."""
        if event.get("detail-type") not in SPOT_EVENTS:
            return None
        detail = event.get("detail")
        iid = detail.get("instance-id") if isinstance(detail, dict) else None
        if not isinstance(iid, str):
            return None
        self._notices.add(iid)
        log.warning("aws_spot_notice", host=iid, kind=event["detail-type"])
        return iid

    async def poll_notices(self) -> list[str]:
        """Drain the notice queue: the hosts newly marked draining. Every message read is
        deleted (events of other kinds and unreadable bodies too, logged), so none comes back."""
        if self.sqs is None:
            return []
        url = self.settings.notice_queue_url
        noticed: list[str] = []
        for _ in range(10):  # at most 100 messages a step; the rest on the next one
            reply = await asyncio.to_thread(
                self.sqs.receive_message, QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0
            )
            messages = reply.get("Messages", [])
            if not messages:
                break
            for m in messages:
                try:
                    event = json.loads(m.get("Body", ""))
                except ValueError:
                    event = None
                iid = self.spot_notice(event) if isinstance(event, dict) else None
                if iid is not None:
                    noticed.append(iid)
                elif not isinstance(event, dict):
                    log.warning("aws_notice_unreadable", message_id=m.get("MessageId"))
            await asyncio.to_thread(
                self.sqs.delete_message_batch,
                QueueUrl=url,
                Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)],
            )
        return noticed

    async def aclose(self) -> None:
        return None
