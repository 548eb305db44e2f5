"""The reporter's full and delta heartbeats: what it sends when, and what a delta holds."""

from __future__ import annotations

import msgspec
import pytest

from gpu_agent.client import Unavailable, UnknownHost
from gpu_agent.config import AgentSettings
from gpu_agent.reporting import Reporter, report_key
from matchmaker.models import GpuReport, Heartbeat, HeartbeatReply, HostRegistration, SlotReport, SlotSpec, SlotState
from pixelfleet.shared_settings import ConfigError

REG = HostRegistration(
    host_id="h",
    boot_id="b",
    signaling_url="ws://x",
    slots=[SlotSpec(index=i, tenant="t", app="a", streamer_id=f"h-{i}") for i in range(4)],
)


class ScriptedClient:
    """Answers each heartbeat with the next scripted outcome (a reply or an error);
    a plain reply once the script is used up. Keeps every heartbeat it was sent."""

    def __init__(self) -> None:
        self.script: list[HeartbeatReply | Exception] = []
        self.sent: list[Heartbeat] = []
        self.registrations = 0

    async def register(self, registration: HostRegistration) -> None:
        self.registrations += 1

    async def heartbeat(self, host_id: str, heartbeat: Heartbeat) -> HeartbeatReply:
        self.sent.append(heartbeat)
        outcome = self.script.pop(0) if self.script else HeartbeatReply()
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    async def drain(self, host_id: str) -> bool:
        return False

    async def aclose(self) -> None:
        pass


class Host:
    """The agent's side: every slot's current report, changed by the test."""

    def __init__(self) -> None:
        self.slots = {i: SlotReport(index=i, state=SlotState.READY, nvenc_load=0.2, gpu_load=0.3) for i in range(4)}

    def heartbeat(self) -> Heartbeat:
        return Heartbeat(boot_id="b", slots=list(self.slots.values()), gpu_load=0.3)

    def set(self, index: int, **changes: object) -> None:
        old = self.slots[index]
        fields = {f: getattr(old, f) for f in SlotReport.__struct_fields__}
        self.slots[index] = SlotReport(**(fields | changes))


def reporter(full_every: int = 30) -> tuple[Reporter, ScriptedClient, Host]:
    client, host = ScriptedClient(), Host()
    return Reporter(client, lambda: REG, host.heartbeat, lambda _: None, full_every=full_every), client, host


def shape(hb: Heartbeat) -> tuple[int, bool, list[int]]:
    return hb.seq, hb.full, [r.index for r in hb.slots]


async def test_full_first_then_deltas_of_what_changed() -> None:
    r, client, host = reporter()
    assert await r.beat_now()
    assert shape(client.sent[-1]) == (1, True, [0, 1, 2, 3])
    assert await r.beat_now()
    assert shape(client.sent[-1]) == (2, False, [])  # nothing changed: no slot, still a beat
    host.set(1, state=SlotState.RESETTING)
    host.set(3, reset_for="s-1")
    assert await r.beat_now()
    sent = client.sent[-1]
    assert shape(sent) == (3, False, [1, 3])
    assert sent.slots == [host.slots[1], host.slots[3]] and sent.gpu_load == 0.3  # host loads in every beat
    # Loads count at the precision placement uses: whole percent.
    host.set(0, nvenc_load=0.204)  # 20 % still
    host.set(2, gpu_load=0.306)  # 31 %
    assert await r.beat_now()
    assert shape(client.sent[-1]) == (4, False, [2])
    assert r.full_sent == 1


async def test_gpus_are_sent_when_their_whole_percent_load_changed() -> None:
    r, client, host = reporter()
    gpus = {0: GpuReport(index=0, gpu_load=0.5, nvenc_load=0.2), 1: GpuReport(index=1, gpu_load=0.1)}
    r.heartbeat = lambda: msgspec.structs.replace(host.heartbeat(), gpus=list(gpus.values()))
    assert await r.beat_now()
    assert [g.index for g in client.sent[-1].gpus] == [0, 1]  # full: every GPU
    gpus[0] = GpuReport(index=0, gpu_load=0.503, nvenc_load=0.2)  # 50 % still
    gpus[1] = GpuReport(index=1, gpu_load=0.12)  # 12 %
    assert await r.beat_now()
    assert client.sent[-1].full is False and client.sent[-1].gpus == [gpus[1]] and client.sent[-1].slots == []
    assert await r.beat_now()
    assert client.sent[-1].gpus == []  # nothing changed since the acknowledged beat
    client.script = [HeartbeatReply(snapshot=True)]
    assert await r.beat_now()
    assert await r.beat_now()
    assert client.sent[-1].full is True and len(client.sent[-1].gpus) == 2  # asked: every GPU again


async def test_full_after_a_failure_or_when_asked() -> None:
    r, client, host = reporter()
    client.script = [HeartbeatReply(), Unavailable("timed out")]
    assert await r.beat_now()
    host.set(0, state=SlotState.DEAD)
    assert not await r.beat_now()  # sent, unanswered: it may or may not have applied
    assert await r.beat_now()
    assert [shape(hb) for hb in client.sent] == [(1, True, [0, 1, 2, 3]), (2, False, [0]), (3, True, [0, 1, 2, 3])]
    client.script = [HeartbeatReply(snapshot=True)]
    assert await r.beat_now()
    assert shape(client.sent[-1]) == (4, False, [])
    host.set(2, state=SlotState.STARTING)
    assert await r.beat_now()
    assert shape(client.sent[-1]) == (5, True, [0, 1, 2, 3])  # the matchmaker asked for it
    assert await r.beat_now()
    assert shape(client.sent[-1]) == (6, False, [])


async def test_a_full_heartbeat_at_least_every_full_every() -> None:
    r, client, _ = reporter(full_every=3)
    for _ in range(7):
        assert await r.beat_now()
    assert [(hb.seq, hb.full) for hb in client.sent] == [
        (1, True),
        (2, False),
        (3, False),
        (4, True),
        (5, False),
        (6, False),
        (7, True),
    ]
    r1, client1, _ = reporter(full_every=1)
    for _ in range(3):
        assert await r1.beat_now()
    assert all(hb.full for hb in client1.sent)


async def test_registering_again_numbers_from_1_with_a_full_heartbeat() -> None:
    r, client, host = reporter()
    for _ in range(3):
        assert await r.beat_now()
    client.script = [UnknownHost("404")]
    host.set(1, state=SlotState.DEAD)
    assert await r.beat_now()
    assert client.registrations == 2
    assert [shape(hb) for hb in client.sent[-2:]] == [(4, False, [1]), (1, True, [0, 1, 2, 3])]
    assert await r.beat_now()
    assert shape(client.sent[-1]) == (2, False, [])


def test_report_key_rounds_loads_as_placement_does() -> None:
    r = SlotReport(index=0, state=SlotState.READY, nvenc_load=0.125, gpu_load=0.994, reset_for="s")
    assert report_key(r) == ("ready", "s", 13, 99)


def test_full_heartbeat_every_must_be_positive() -> None:
    assert AgentSettings().full_heartbeat_every == 30
    with pytest.raises(ConfigError, match="full_heartbeat_every"):
        AgentSettings(full_heartbeat_every=0)
