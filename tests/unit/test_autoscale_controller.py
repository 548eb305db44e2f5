"""The controller between a matchmaker and a provider: a host under a provider notice (Spot
interruption or rebalance) is drained in the matchmaker before anything terminates it, and
a busy one is left to its players until it empties; a host stuck booting is terminated and
replaced after ``boot_timeout_s``."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from autoscale.controller import Controller, Snapshot, pool_view
from autoscale.policy import HostView, PoolPolicy, PoolView, Scaler, StaticSizer
from autoscale.providers.base import ProviderHost
from matchmaker.models import Host, Slot, SlotState


class FakeMatchmaker:
    """The matchmaker as the controller reads it, with its one placement rule that matters
    here: a player goes to a READY slot of a live host that is not draining."""

    def __init__(self) -> None:
        self.hosts: dict[str, Host] = {}
        self.slots: dict[str, Slot] = {}
        self.calls: list[tuple[str, str]] = []  # ("drain", host) in the order they came

    def register(self, host_id: str, slots: int, region: str = "r") -> None:
        self.hosts[host_id] = Host(
            host_id=host_id, boot_id="b", region=region, az="a", gpu_model="g", signaling_url="ws://x", last_heartbeat=0
        )
        for n in range(slots):
            sid = f"{host_id}/{n}"
            self.slots[sid] = Slot(
                slot_id=sid,
                host_id=host_id,
                tenant="default",
                app="default",
                region=region,
                gpu_model="g",
                streamer_id=sid,
                signaling_url="ws://x",
                state=SlotState.READY,
            )

    def place(self, session_id: str) -> str | None:
        for s in sorted(self.slots.values(), key=lambda s: s.slot_id):
            host = self.hosts[s.host_id]
            if s.state == SlotState.READY and not host.draining and not host.dead:
                s.state, s.session_id = SlotState.ASSIGNED, session_id
                return s.host_id
        return None

    def end(self, session_id: str) -> None:
        for s in self.slots.values():
            if s.session_id == session_id:
                s.state, s.session_id = SlotState.READY, None

    async def snapshot(self) -> Snapshot:
        return Snapshot(hosts=list(self.hosts.values()), slots=list(self.slots.values()), queued={})

    async def drain(self, host_id: str) -> None:
        self.calls.append(("drain", host_id))
        self.hosts[host_id].draining = True


class FakeProvider:
    name = "fake"

    def __init__(self, mm: FakeMatchmaker, hosts: list[str]) -> None:
        self.mm = mm
        self.live = {h: ProviderHost(host_id=h, spot=True) for h in hosts}
        self.inbox: list[str] = []  # notices waiting to be polled
        self.launched = 0

    async def poll_notices(self) -> list[str]:
        noticed, self.inbox = self.inbox, []
        for h in noticed:
            self.live[h] = ProviderHost(host_id=h, spot=True, draining=True)
        return noticed

    async def hosts(self) -> list[ProviderHost]:
        return list(self.live.values())

    async def launch(self, count: int) -> list[str]:
        ids = []
        for _ in range(count):
            self.launched += 1
            ids.append(f"n-{self.launched}")
            self.live[ids[-1]] = ProviderHost(host_id=ids[-1], spot=True)
        return ids

    async def terminate(self, host_id: str) -> None:
        self.mm.calls.append(("terminate", host_id))
        del self.live[host_id]

    async def protect(self, busy: set[str]) -> None:
        return None

    async def aclose(self) -> None:
        return None


def controller(
    mm: FakeMatchmaker, provider: FakeProvider, hosts: int, clock: Callable[[], float] = lambda: 0.0
) -> Controller:
    policy = PoolPolicy(min_hosts=0, max_hosts=10, slots_per_host=2, scale_in_cooldown_s=3600, boot_timeout_s=600)
    return Controller(mm, provider, Scaler(policy, StaticSizer(hosts)), clock=clock)


async def test_noticed_empty_host_is_drained_before_it_is_terminated() -> None:
    mm = FakeMatchmaker()
    for h in ("i-1", "i-2"):
        mm.register(h, 2)
    provider = FakeProvider(mm, ["i-1", "i-2"])
    c = controller(mm, provider, hosts=2)
    assert (await c.step()).reason == "steady"

    provider.inbox.append("i-2")  # a Spot interruption warning for the empty i-2
    d = await c.step()
    assert d.drain == ["i-2"] and d.terminate == []  # drained in the matchmaker, still running
    assert d.launch == 1  # its replacement
    assert mm.hosts["i-2"].draining and "i-2" in provider.live
    assert {mm.place(f"p{n}") for n in range(4)} <= {"i-1", None}  # nobody lands on i-2 now
    for n in range(4):
        mm.end(f"p{n}")

    d = await c.step()
    assert d.terminate == ["i-2"] and d.drain == []
    assert mm.calls == [("drain", "i-2"), ("terminate", "i-2")]


async def test_noticed_busy_host_gets_no_new_players_and_stays_while_busy() -> None:
    mm = FakeMatchmaker()
    mm.register("i-1", 2)
    provider = FakeProvider(mm, ["i-1"])
    c = controller(mm, provider, hosts=1)
    assert mm.place("kept") == "i-1"  # one of its two slots in use

    provider.inbox.append("i-1")  # a rebalance recommendation
    d = await c.step()
    assert d.drain == ["i-1"] and d.terminate == [] and d.launch == 1
    assert mm.place("newcomer") is None  # its free slot takes nobody

    for _ in range(3):
        d = await c.step()
        assert d.terminate == [] and d.drain == []  # drained once, kept while its player plays
    assert ("terminate", "i-1") not in mm.calls

    mm.end("kept")
    d = await c.step()
    assert d.terminate == ["i-1"]
    assert mm.calls == [("drain", "i-1"), ("terminate", "i-1")]


async def test_noticed_host_the_matchmaker_never_saw_is_terminated_without_a_drain() -> None:
    mm = FakeMatchmaker()
    provider = FakeProvider(mm, ["i-9"])  # launched, its agent not registered yet
    c = controller(mm, provider, hosts=1)
    provider.inbox.append("i-9")
    d = await c.step()
    assert d.drain == [] and d.terminate == ["i-9"] and d.launch == 1
    assert mm.calls == [("terminate", "i-9")]


async def test_a_failing_notice_queue_does_not_stop_the_step() -> None:
    mm = FakeMatchmaker()
    mm.register("i-1", 2)
    provider = FakeProvider(mm, ["i-1"])

    async def broken() -> list[str]:
        raise ConnectionError("queue unreachable")

    provider.poll_notices = broken  # type: ignore[method-assign]
    d = await controller(mm, provider, hosts=2).step()
    assert d.launch == 1


async def test_a_host_stuck_booting_is_terminated_and_replaced() -> None:
    mm = FakeMatchmaker()
    provider = FakeProvider(mm, ["i-stuck", "i-slow"])  # neither agent has registered
    now = [0.0]
    c = controller(mm, provider, hosts=2, clock=lambda: now[0])
    for t in (0.0, 300.0):
        now[0] = t
        d = await c.step()
        assert d.reason == "steady" and d.booting_hosts == 2 and d.terminate == []
    mm.register("i-slow", 2)  # slow, but up before the timeout: never timed out
    now[0] = 599.0
    assert (await c.step()).terminate == []
    now[0] = 600.0  # i-stuck has been booting boot_timeout_s (600 s)
    d = await c.step()
    assert d.boot_timed_out == ["i-stuck"] and d.terminate == ["i-stuck"]
    assert d.launch == 1 and d.reason == "boot_timeout, scale_out"  # replaced in the same step
    assert ("terminate", "i-stuck") in mm.calls and "i-stuck" not in provider.live
    now[0] = 900.0  # the replacement's clock started when it was first seen, not at 0
    d = await c.step()
    assert d.terminate == [] and d.booting_hosts == 1 and d.reason == "steady"


async def test_a_host_whose_agent_died_times_out_from_when_it_went_quiet() -> None:
    mm = FakeMatchmaker()
    mm.register("i-1", 2)
    provider = FakeProvider(mm, ["i-1"])
    now = [0.0]
    c = controller(mm, provider, hosts=1, clock=lambda: now[0])
    assert (await c.step()).booting_hosts == 0
    mm.hosts["i-1"].dead = True  # its agent stopped heartbeating at about 1000 s
    now[0] = 1000.0
    assert (await c.step()).booting_hosts == 1  # counted as booting again, its clock from now
    now[0] = 1599.0
    assert (await c.step()).terminate == []
    now[0] = 1600.0
    d = await c.step()
    assert d.terminate == ["i-1"] and d.reason.startswith("boot_timeout")


def test_boot_timeout_zero_never_times_out_and_negative_is_refused() -> None:
    stuck = HostView(host_id="h", state="booting", slots=1, busy=0, booting_since=0.0)
    never = Scaler(PoolPolicy(min_hosts=1, boot_timeout_s=0), StaticSizer(1))
    assert never.decide(PoolView(now=1e9, hosts=[stuck])).terminate == []
    with pytest.raises(ValueError, match="boot_timeout_s"):
        PoolPolicy(boot_timeout_s=-1)


async def test_a_step_whose_action_fails_still_logs_its_decision(tmp_path: Path) -> None:
    mm = FakeMatchmaker()
    provider = FakeProvider(mm, [])

    async def refused(count: int) -> list[str]:
        raise RuntimeError("launch refused")

    provider.launch = refused  # type: ignore[method-assign]
    log = tmp_path / "decisions.jsonl"
    policy = PoolPolicy(min_hosts=0, max_hosts=10)
    c = Controller(mm, provider, Scaler(policy, StaticSizer(3)), decision_log=str(log), clock=lambda: 0.0)
    with pytest.raises(RuntimeError, match="launch refused"):
        await c.step()
    (line,) = log.read_text().splitlines()
    record = json.loads(line)
    assert record["launch"] == 3 and record["reason"] == "scale_out"
    assert record["error"] == "RuntimeError: launch refused"
    assert record["pool"] == "default/default" and record["region"] is None


def test_a_regional_pool_counts_its_regions_slots_and_the_tickets_it_can_serve() -> None:
    """A pool (tenant, app, region): the slots of hosts in its region, the tickets preferring
    its region, and the tickets preferring none (served anywhere, so every regional pool
    counts them). Without a region, the pool is the (tenant, app) everywhere."""
    mm = FakeMatchmaker()
    mm.register("eu-1", 2, region="eu")
    mm.register("us-1", 2, region="us")
    mm.place("p1")  # eu-1/0, the first READY slot
    queued: dict[tuple[str, str, str | None], int] = {
        ("default", "default", "eu"): 3,
        ("default", "default", "us"): 5,
        ("default", "default", None): 2,
        ("default", "other", "eu"): 7,  # another app's queue
        ("acme", "default", None): 11,  # another tenant's
    }
    snap = Snapshot(hosts=list(mm.hosts.values()), slots=list(mm.slots.values()), queued=queued)
    eu_host, us_host = ProviderHost(host_id="eu-1"), ProviderHost(host_id="us-1")

    eu = pool_view(0.0, [eu_host], snap, "default", "default", 2, region="eu")
    assert [(h.host_id, h.state, h.slots, h.busy) for h in eu.hosts] == [("eu-1", "ready", 2, 1)]
    assert eu.queued == 3 + 2
    us = pool_view(0.0, [us_host], snap, "default", "default", 2, region="us")
    assert [(h.host_id, h.state, h.slots, h.busy) for h in us.hosts] == [("us-1", "ready", 2, 0)]
    assert us.queued == 5 + 2
    assert pool_view(0.0, [], snap, "default", "default", 2, region="ap").queued == 2  # only the unplaced
    everywhere = pool_view(0.0, [eu_host, us_host], snap, "default", "default", 2)
    assert [(h.state, h.busy) for h in everywhere.hosts] == [("ready", 1), ("ready", 0)]
    assert everywhere.queued == 3 + 5 + 2
    # A launched host whose agent registered in another region has no slot of this pool:
    # it reads as booting (and times out), never as this region's supply.
    stray = pool_view(0.0, [eu_host, us_host], snap, "default", "default", 2, region="eu")
    assert [(h.host_id, h.state, h.busy) for h in stray.hosts] == [("eu-1", "ready", 1), ("us-1", "booting", 0)]


async def test_a_regional_controller_names_its_region_in_each_decision(tmp_path: Path) -> None:
    mm = FakeMatchmaker()
    mm.register("eu-1", 2, region="eu")
    provider = FakeProvider(mm, ["eu-1"])
    log = tmp_path / "decisions.jsonl"
    policy = PoolPolicy(min_hosts=0, max_hosts=10, slots_per_host=2)
    c = Controller(mm, provider, Scaler(policy, StaticSizer(1)), region="eu", decision_log=str(log), clock=lambda: 0.0)
    assert (await c.step()).reason == "steady"  # its one host is READY in its region
    (line,) = log.read_text().splitlines()
    assert json.loads(line)["region"] == "eu"
