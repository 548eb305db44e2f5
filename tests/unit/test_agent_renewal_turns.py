"""The agent's two-phase credential renewal, without processes: a due slot is reported
``draining`` on its turn; it restarts only once a heartbeat that carried that report was
applied and did not name it ``busy``; busy keeps the streamer and passes the turn on; a
failed or refused heartbeat restarts nothing; one slot of a host at a time, oldest
credential first (gpu_agent/credentials.py, wired through Agent._on_reply)."""

from __future__ import annotations

import pytest

from gpu_agent.agent import Agent
from gpu_agent.client import Unavailable
from gpu_agent.config import AgentSettings
from gpu_agent.credentials import (
    KEPT_RETRY_S,
    CredentialGate,
    Renewal,
    RenewalTurns,
    RenewStep,
    SlotRenewal,
    acknowledged,
)
from gpu_agent.reporting import Reporter
from gpu_agent.slot_plan import SlotPlan
from gpu_agent.slots import Phase, SignalingWatch, SlotSet
from matchmaker.models import Heartbeat, HeartbeatReply, SlotReport, SlotState
from pixelfleet.shared_settings import ConfigError
from tests.unit.test_gpu_agent_reporting import ScriptedClient

DUE, KEEP = Renewal.BEFORE_EXPIRY, Renewal.KEEP
DRAINING, READY = SlotState.DRAINING, SlotState.READY


def pair(limit: int = 1, slots: int = 2, drain_first: bool = True) -> tuple[SlotRenewal, SlotRenewal, RenewalTurns]:
    gate = CredentialGate(turns=RenewalTurns(limit=limit, slots=slots), drain_first=drain_first)
    return SlotRenewal(0, gate), SlotRenewal(1, gate), gate.turns


def step(r: SlotRenewal) -> RenewStep | None:
    return r.step  # read afresh (mypy would narrow the attribute across calls)


# --- the pure parts --------------------------------------------------------------------------


def test_acknowledged_reads_only_draining_reports_of_an_applied_heartbeat() -> None:
    sent = [SlotReport(index=0, state=DRAINING), SlotReport(index=1, state=READY), SlotReport(index=2, state=DRAINING)]
    assert acknowledged(sent, HeartbeatReply()) == {0: False, 2: False}
    assert acknowledged(sent, HeartbeatReply(busy=[2])) == {0: False, 2: True}
    assert acknowledged(sent, HeartbeatReply(snapshot=True)) == {}  # not applied: nothing acknowledged
    assert acknowledged([], HeartbeatReply(busy=[0])) == {}  # it did not carry the report


def test_a_due_slot_drains_first_and_restarts_only_once_cleared() -> None:
    a, _, turns = pair()
    assert a.due(DUE, 100.0, 0.0) == (False, True)  # its turn: report draining now
    assert step(a) is RenewStep.DRAINING and a.reports_draining and turns.holders == {0}
    assert a.due(DUE, 100.0, 1.0) == (False, False)  # no answer yet: wait, never restart
    assert a.answer(busy=False, now=2.0)
    assert step(a) is RenewStep.CLEARED and a.reports_draining
    assert a.due(DUE, 100.0, 3.0) == (True, False)  # out of placement: restart now
    a.restarting()
    a.launching()  # the renewal's own restart keeps the turn until READY
    assert step(a) is RenewStep.RESTARTING and not a.reports_draining and turns.holders == {0}
    a.end()  # READY again
    assert step(a) is None and turns.holders == set()


def test_busy_keeps_the_streamer_and_passes_the_turn_on() -> None:
    a, b, turns = pair()
    assert a.due(DUE, 100.0, 0.0) == (False, True)
    assert b.due(DUE, 101.0, 0.0) == (False, False)  # one at a time: b waits
    assert a.answer(busy=True, now=10.0)
    assert step(a) is None and not a.reports_draining and a.kept == 1 and turns.holders == set()
    assert b.due(DUE, 101.0, 10.5) == (False, True)  # b's turn now
    b.end()
    assert a.due(DUE, 100.0, 10.0 + KEPT_RETRY_S - 1) == (False, False)  # held by a session: not asked yet
    assert a.due(DUE, 100.0, 10.0 + KEPT_RETRY_S) == (False, True)  # asked again later
    a.end()
    assert a.answer(busy=False, now=50.0) is False  # an answer for a renewal no longer waiting is ignored
    assert step(a) is None


def test_no_longer_due_cancels_a_waiting_renewal() -> None:
    a, b, turns = pair()
    a.due(DUE, 100.0, 0.0)
    b.due(DUE, 101.0, 0.0)
    assert a.due(KEEP, 100.0, 1.0) == (False, True)  # a player came: ready again
    assert step(a) is None and turns.holders == set() and 0 not in turns.wanting
    assert b.due(DUE, 101.0, 1.0) == (False, True)
    # A reset or a failure's retry launches anew: the waiting renewal is over.
    b.launching()
    assert step(b) is None and turns.holders == set()


def test_turns_go_oldest_credential_first_within_the_limit() -> None:
    turns = RenewalTurns(limit=2, slots=4)
    turns.wanting = {2: 90.0, 3: 80.0}  # two already waiting
    assert not turns.ask(1, 100.0)  # not the oldest
    assert turns.ask(3, 80.0) and turns.ask(2, 90.0)
    assert not turns.ask(1, 100.0)  # the limit: two at once
    turns.release(3)
    assert turns.ask(1, 100.0) and turns.holders == {1, 2}
    turns.withdraw(1)  # withdrawing does not take back a held turn
    assert turns.holders == {1, 2}


def test_the_lead_lets_every_slot_renew_before_the_margin() -> None:
    turns = RenewalTurns(limit=1, slots=4)
    assert turns.lead_s(60.0) == 60.0  # nothing measured yet
    turns.note_cold_start(30.0)
    turns.note_cold_start(20.0)  # the longest counts
    assert turns.lead_s(60.0) == 60.0 + 4 * 30.0
    assert RenewalTurns(limit=2, slots=5, restart_s=30.0).lead_s(60.0) == 60.0 + 3 * 30.0


def test_without_a_matchmaker_a_turn_restarts_at_once() -> None:
    a, b, _ = pair(drain_first=False)
    assert a.due(DUE, 100.0, 0.0) == (True, False)
    assert b.due(DUE, 101.0, 0.0) == (False, False)  # still one at a time


def test_concurrency_setting() -> None:
    assert AgentSettings().credential_renew_concurrency == 1
    with pytest.raises(ConfigError):
        AgentSettings(credential_renew_concurrency=0)


# --- through the agent's reply handling -------------------------------------------------------


@pytest.fixture
async def agent() -> Agent:
    s = AgentSettings(host_id="h", signaling_api_url="http://127.0.0.1:9", metrics_port=-1, credential_renew_margin_s=1)
    a = Agent(s, None)
    a.slots = SlotSet([SlotPlan(0, "h-0"), SlotPlan(1, "h-1")], s, SignalingWatch(s.signaling_api_url), a._changed)
    for slot in a.slots:
        slot.phase = Phase.READY
    return a


def wire(agent: Agent, client: ScriptedClient) -> Reporter:
    agent.reporter = Reporter(client, agent.registration, agent.heartbeat, agent._on_reply)
    return agent.reporter


def states(hb: Heartbeat) -> dict[int, str]:
    return {r.index: str(r.state) for r in hb.slots}


async def test_an_applied_draining_report_clears_the_slot_and_busy_keeps_it(agent: Agent) -> None:
    client = ScriptedClient()
    reporter = wire(agent, client)
    s0, s1 = agent.slots.slots
    assert await reporter.beat_now()
    s0.renewal.due(DUE, 100.0, 0.0)
    s1.renewal.due(DUE, 101.0, 0.0)  # waits for the turn
    client.script = [HeartbeatReply()]
    assert await reporter.beat_now()
    assert states(client.sent[-1]) == {0: "draining"}  # a delta: the state change
    assert step(s0.renewal) is RenewStep.CLEARED  # acknowledged, not busy: restart
    # Its turn passes on once READY again; the next one is busy.
    s0.renewal.end()
    assert s1.renewal.due(DUE, 101.0, 1.0) == (False, True)
    client.script = [HeartbeatReply(busy=[1])]
    assert await reporter.beat_now()
    assert states(client.sent[-1]) == {0: "ready", 1: "draining"}
    assert step(s1.renewal) is None and s1.renewal.kept == 1
    assert await reporter.beat_now()
    assert states(client.sent[-1]) == {1: "ready"}  # back to ready: the matchmaker keeps it assigned


async def test_a_failed_or_refused_heartbeat_restarts_nothing(agent: Agent) -> None:
    client = ScriptedClient()
    reporter = wire(agent, client)
    s0 = agent.slots.slots[0]
    assert await reporter.beat_now()
    s0.renewal.due(DUE, 100.0, 0.0)
    client.script = [Unavailable("timed out"), HeartbeatReply(snapshot=True)]
    assert not await reporter.beat_now()  # it may or may not have applied: wait
    assert step(s0.renewal) is RenewStep.DRAINING
    assert await reporter.beat_now()  # full, draining again; refused (out of sequence)
    assert client.sent[-1].full and states(client.sent[-1])[0] == "draining"
    assert step(s0.renewal) is RenewStep.DRAINING
    # A reply to a heartbeat built before the slot drained acknowledges nothing either.
    s0.renewal.end()
    reporter.heartbeat = lambda: Heartbeat(boot_id=agent.boot_id, slots=[SlotReport(index=0, state=READY)])
    s0.renewal.due(DUE, 100.0, 1.0)
    assert await reporter.beat_now()
    assert step(s0.renewal) is RenewStep.DRAINING
    reporter.heartbeat = agent.heartbeat
    assert await reporter.beat_now()  # the slot's change to draining, applied now
    assert step(s0.renewal) is RenewStep.CLEARED
