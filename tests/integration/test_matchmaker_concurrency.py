"""Four matchmaker replicas against one Redis, driven hard; then the whole history is checked.

The driver (this process, asyncio + aiohttp) plays three parts at once, always through a
random replica:

- GPU agents: register, heartbeat every ~0.2 s, answer reset requests with ``reset_for``
  after a short random delay; some die (stop heartbeating), most come back with a new boot
  id (first refused with 409 while the old boot is still alive), one stays dead; now and
  then a slot fails (reported dead for a few beats);
- players: thousands of ``POST /sessions`` over three (tenant, app) queues, paced plus
  bursts; served players connect and leave through the session-events endpoint, some
  reconnect with their client key, some never connect, some stay past the maximum session
  length, some are force-ended by an operator; queued players wait on the SSE stream, poll,
  cancel, or hang up; a few ask for an unknown app;
- an operator at the end, force-ending whatever is left.

Every response is kept, with send and receive times. Afterwards ``check_history`` goes
over the history, the session records of all replicas and the final state, and lists every
broken invariant: a slot held by two sessions at once (intervals from the records), a slot
handed on without its reset, a ticket that left the queue twice, a request with no
outcome, a session recorded twice or never, a slot left assigned. The checker is pure, and
``test_checker_*`` feed it crafted histories to prove that it catches what it claims to.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import random
import signal
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import orjson
import pytest

from pixelfleet.net import free_port
from tests.support.hosts import registration_body
from tests.support.processes import Child, start_child

pytestmark = pytest.mark.integration

AGENT = "agent-token-" + "a" * 24
ADMIN = "admin-token-" + "b" * 24
CALLER_SECRET = "caller-secret-" + "c" * 32
TOKEN_SECRET = "session-secret-" + "d" * 32

APPS = (("acme", "game"), ("acme", "maze"), ("beta", "game"))
END_REASONS = {
    "player_left",
    "never_connected",
    "idle_timeout",
    "max_session_length",
    "host_dead",
    "slot_failed",
    "force_ended",
}
# A slot handed to a new session without a reset in between is only fine when the old
# session ended because the slot (or its host) died: those come back fresh.
RESET_EXEMPT = {"host_dead", "slot_failed"}


@dataclass
class Scenario:
    replicas: int = 4
    hosts: int = 20
    slots_per_host: int = 4
    requests: int = 3000  # session requests by new players (reconnects come on top)
    load_s: float = 28.0  # players arrive during this long
    max_players: int = 320  # players alive at once
    bursts: int = 4  # this many times, `burst` players arrive at once
    burst: int = 120
    deaths: int = 7  # host deaths during the load
    permanent_deaths: int = 1  # of which this many never come back
    slot_failures: int = 6
    beat_s: float = 0.2
    seed: int = 0
    env: dict[str, str] = field(
        default_factory=lambda: {
            "HEARTBEAT_TTL_S": "2.0",
            "CONNECT_TIMEOUT_S": "1.0",
            "RECONNECT_GRACE_S": "0.4",
            "MAX_SESSION_S": "3.0",
            "QUEUE_MAX_LENGTH": "30",
            "QUEUE_MAX_WAIT_S": "2.5",
            "SWEEP_INTERVAL_S": "0.1",
            "IDLE_TIMEOUT_S": "0",
        }
    )


# ================================================================================ checker


@dataclass
class Outcome:
    req: int
    kind: str  # served | queued_served | refused | cancelled | expired | served_gone | lost
    reason: str | None = None
    session_id: str | None = None
    streamer_id: str | None = None
    client_key: str | None = None
    reattached: bool = False
    learned_at: float | None = None  # when the driver got the reply naming the session


@dataclass
class CheckResult:
    errors: list[str]
    outcomes: dict[int, Outcome]
    counts: dict[str, Any]


def _final_ticket_outcomes(entries: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """Each way the history says this ticket left WAITING (there must be exactly one)."""
    exits: list[tuple[str, dict[str, Any]]] = []
    for e in entries:
        body, status = e.get("body"), e.get("status")
        if not isinstance(body, dict) or status is None:
            continue
        if e["kind"] == "cancel" and status == 200 and body.get("status") == "cancelled":
            exits.append(("cancelled", body))
        elif e["kind"] in ("ticket", "ticket_event") and status == 200:
            state = body.get("status")
            if state == "assigned":
                exits.append(("assigned:" + str(body.get("session_id")), body))
            elif state in ("cancelled", "expired", "served"):
                exits.append((state, body))
    return exits


def check_history(
    history: Iterable[dict[str, Any]], records: list[dict[str, Any]], final: dict[str, Any], *, slot_ids: set[str]
) -> CheckResult:
    """Every invariant over one run. ``history``: the driver's log (dicts with ``kind``,
    ``req``, ``t0``, ``t1``, ``status``, ``body`` and kind-specific fields); ``records``:
    the ended-session records of every replica; ``final``: admin listings taken at the end
    (``slots``, ``sessions``, ``queue``)."""
    errors: list[str] = []
    by_req: dict[int, list[dict[str, Any]]] = collections.defaultdict(list)
    resets_asked: list[tuple[str, str, float]] = []  # (slot, session, time)
    resets_done: dict[tuple[str, str], float] = {}  # (slot, session) -> when the agent finished
    registered: dict[str, list[float]] = collections.defaultdict(list)  # host -> (re)registrations
    failed: dict[str, list[float]] = collections.defaultdict(list)  # slot -> reported dead
    for e in history:
        kind = e["kind"]
        if e.get("req") is not None:
            by_req[e["req"]].append(e)
        elif kind == "heartbeat" and e.get("status") == 200:
            for r in e["body"]["reset"]:
                resets_asked.append((f"{e['host']}/{r['index']}", r["session_id"], e["t1"]))
        elif kind == "reset_done":
            resets_done.setdefault((e["slot"], e["session"]), e["t0"])
        elif kind == "register" and e.get("status") == 201:
            registered[e["host"]].append(e["t0"])
        elif kind == "slot_dead":
            failed[e["slot"]].append(e["t0"])

    # --- every request has exactly one outcome, with a reason when it was not served -------
    outcomes: dict[int, Outcome] = {}
    for req, entries in sorted(by_req.items()):
        allocs = [e for e in entries if e["kind"] == "allocate"]
        if len(allocs) != 1:
            errors.append(f"request {req}: {len(allocs)} allocate calls in the history")
            continue
        a = allocs[0]
        status, body, key = a.get("status"), a.get("body"), a.get("client_key")
        if status == 201:
            if not (
                isinstance(body, dict) and body.get("session_id") and body.get("token") and body.get("streamer_id")
            ):
                errors.append(f"request {req}: 201 without a session, token and streamer: {body!r}")
                continue
            outcomes[req] = Outcome(
                req,
                "served",
                session_id=body["session_id"],
                streamer_id=body["streamer_id"],
                client_key=key,
                learned_at=a.get("t1"),
            )
        elif status == 202:
            if not (isinstance(body, dict) and body.get("status") == "waiting" and body.get("ticket_id")):
                errors.append(f"request {req}: 202 without a waiting ticket: {body!r}")
                continue
            exits = _final_ticket_outcomes(entries)
            distinct = sorted({x for x, _ in exits})
            if not distinct:
                errors.append(f"request {req}: ticket {body['ticket_id']} never left the queue (lost)")
                outcomes[req] = Outcome(req, "lost", client_key=key)
            elif len(distinct) > 1:
                errors.append(f"request {req}: ticket {body['ticket_id']} left WAITING more than once: {distinct}")
            else:
                how, b = exits[0]
                if how.startswith("assigned:"):
                    if not (b.get("token") and b.get("streamer_id")):
                        errors.append(f"request {req}: served ticket without token or streamer: {b!r}")
                    outcomes[req] = Outcome(
                        req,
                        "queued_served",
                        session_id=b["session_id"],
                        streamer_id=b.get("streamer_id"),
                        client_key=key,
                        learned_at=min(
                            e["t1"]
                            for e in entries
                            if e["kind"] in ("ticket", "ticket_event")
                            and isinstance(e.get("body"), dict)
                            and e["body"].get("status") == "assigned"
                        ),
                    )
                elif how == "served":
                    outcomes[req] = Outcome(req, "served_gone", client_key=key)
                else:
                    reason = b.get("reason") or ("cancelled by the client" if how == "cancelled" else None)
                    if not reason:
                        errors.append(f"request {req}: ticket {how} without a reason: {b!r}")
                    outcomes[req] = Outcome(req, how, reason=reason, client_key=key)
        elif status is not None and 400 <= status < 500 and isinstance(body, dict) and body.get("error"):
            outcomes[req] = Outcome(req, "refused", reason=str(body["error"]), client_key=key)
        else:
            errors.append(f"request {req}: no outcome (status {status}, body {body!r}, error {a.get('error')})")
            outcomes[req] = Outcome(req, "lost", client_key=key)

    # --- sessions: one holder each (or the same client again), recorded exactly once -------
    served: dict[str, list[Outcome]] = collections.defaultdict(list)
    for o in outcomes.values():
        if o.session_id:
            served[o.session_id].append(o)
    for sid, holders in served.items():
        if len({o.streamer_id for o in holders}) > 1:
            errors.append(
                f"session {sid} was given out with different streamers: {sorted({str(o.streamer_id) for o in holders})}"
            )
        if len(holders) > 1:
            keys = {o.client_key for o in holders}
            if None in keys or len(keys) > 1:
                errors.append(
                    f"session {sid} was given to requests {[o.req for o in holders]} "
                    f"of different clients {sorted(map(str, keys))}"
                )
            for o in sorted(holders, key=lambda o: o.req)[1:]:
                o.reattached = True
    seen: collections.Counter[str] = collections.Counter(r["session_id"] for r in records)
    for sid, n in seen.items():
        if n > 1:
            errors.append(f"session {sid} recorded {n} times")
    by_id = {r["session_id"]: r for r in records}
    for sid, holders in served.items():
        r = by_id.get(sid)
        if r is None:
            errors.append(f"session {sid} (request {holders[0].req}) was served but never recorded as ended")
            continue
        want = str(holders[0].streamer_id)
        if want.rsplit("-", 1) != r["slot_id"].rsplit("/", 1):
            errors.append(f"session {sid}: client was sent to streamer {want}, the record says slot {r['slot_id']}")
    phantoms = sorted(set(by_id) - set(served))
    served_gone = sum(1 for o in outcomes.values() if o.kind == "served_gone")
    if len(phantoms) > served_gone:
        errors.append(
            f"{len(phantoms)} recorded sessions were never given to a client "
            f"(only {served_gone} tickets were served after their session ended): {phantoms[:5]}"
        )
    for r in records:
        if r["end_reason"] not in END_REASONS:
            errors.append(f"session {r['session_id']}: unknown end reason {r['end_reason']!r}")
        if r["ended_at"] < r["created_at"]:
            errors.append(f"session {r['session_id']}: ended before it was created")
        if r["slot_id"] not in slot_ids:
            errors.append(f"session {r['session_id']}: unknown slot {r['slot_id']}")

    # --- no slot ever held by two sessions at once; no slot handed on without its reset ---
    # A record's created_at is the replica's clock read before its store call, which can wait
    # on a busy Redis while the agent's reset is reported: it may precede the reset by a few
    # ms with the order still right. The sound bound is causal: the reset must be finished
    # (logged before the heartbeat that reports it) before the client is told of the session.
    learned: dict[str, float] = {}
    for o in outcomes.values():
        if o.session_id and o.learned_at is not None:
            learned[o.session_id] = min(o.learned_at, learned.get(o.session_id, o.learned_at))
    per_slot: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for r in records:
        per_slot[r["slot_id"]].append(r)
    double = 0
    for slot, rs in per_slot.items():
        rs.sort(key=lambda r: (r["created_at"], r["ended_at"]))
        holder = rs[0]
        for r in rs[1:]:
            if r["created_at"] < holder["ended_at"]:
                double += 1
                errors.append(
                    f"slot {slot} held by two sessions at once: {holder['session_id']} "
                    f"[{holder['created_at']:.3f}, {holder['ended_at']:.3f}] and {r['session_id']} "
                    f"[{r['created_at']:.3f}, {r['ended_at']:.3f}]"
                )
            elif holder["end_reason"] not in RESET_EXEMPT:
                done = resets_done.get((slot, holder["session_id"]))
                host = slot.rsplit("/", 1)[0]
                # A host that registered again, or a slot its agent reported dead, comes back fresh.
                fresh = any(holder["ended_at"] <= t <= r["created_at"] for t in registered.get(host, ())) or any(
                    holder["created_at"] <= t <= r["created_at"] for t in failed.get(slot, ())
                )
                given = learned.get(r["session_id"], r["created_at"])
                if (done is None or done > given) and not fresh:
                    errors.append(
                        f"slot {slot} went to {r['session_id']} (created {r['created_at']:.4f}, client "
                        f"told at {given:.4f}) without the reset after {holder['session_id']} "
                        f"(agent finished it at {done})"
                    )
            if r["ended_at"] > holder["ended_at"]:
                holder = r
    for slot, sid, _t in resets_asked:
        r = by_id.get(sid)
        if r is None or r["slot_id"] != slot:
            errors.append(
                f"agent was asked to reset slot {slot} after session {sid}, "
                f"which {'ended on ' + r['slot_id'] if r else 'was never recorded'}"
            )

    # --- the end state: every slot ready, dead, or resetting with a pending reset -----------
    final_slots = {s["slot_id"]: s for s in final.get("slots", [])}
    if set(final_slots) != slot_ids:
        errors.append(
            f"final slots differ: missing {sorted(slot_ids - set(final_slots))[:5]}, "
            f"extra {sorted(set(final_slots) - slot_ids)[:5]}"
        )
    for sid, s in sorted(final_slots.items()):
        if s["state"] == "resetting" and s.get("ended_session"):
            continue
        if s["state"] not in ("ready", "dead") or s.get("session_id"):
            errors.append(
                f"slot {sid} ended the run {s['state']} (session {s.get('session_id')}, "
                f"pending reset {s.get('ended_session')})"
            )
    if final.get("sessions"):
        errors.append(
            f"{len(final['sessions'])} sessions still live at the end: "
            f"{[s['session_id'] for s in final['sessions']][:5]}"
        )
    if final.get("queue"):
        errors.append(f"tickets still waiting at the end: {final['queue']}")

    kinds = collections.Counter(o.kind for o in outcomes.values())
    counts = {
        "requests": len(outcomes),
        "served": kinds["served"],
        "reattached": sum(o.reattached for o in outcomes.values()),
        "queued": sum(kinds[k] for k in ("queued_served", "cancelled", "expired", "served_gone")),
        "queued_then_served": kinds["queued_served"],
        "queued_served_after_session_end": served_gone,
        "cancelled": kinds["cancelled"],
        "expired": kinds["expired"],
        "refused": dict(collections.Counter(o.reason for o in outcomes.values() if o.kind == "refused")),
        "lost": kinds["lost"],
        "sessions_recorded": len(records),
        "ended_by_reason": dict(collections.Counter(r["end_reason"] for r in records)),
        "double_assignments": double,
        # Not an invariant of this test, a known race (reported): the sweep decides on a
        # listing and ends unconditionally, so a session that connected meanwhile is ended
        # as never_connected (sometimes with ended_at before connected_at).
        "ended_never_connected_after_connecting": sum(
            1 for r in records if r["end_reason"] == "never_connected" and r.get("connected_at") is not None
        ),
        "final_slot_states": dict(collections.Counter(s["state"] for s in final_slots.values())),
    }
    return CheckResult(errors, outcomes, counts)


# ================================================================================ checker tests


def _rec(sid: str, slot: str, created: float, ended: float, reason: str = "player_left") -> dict[str, Any]:
    return {"session_id": sid, "slot_id": slot, "created_at": created, "ended_at": ended, "end_reason": reason}


def _alloc(req: int, sid: str, streamer: str, t: float, key: str | None = None) -> dict[str, Any]:
    return {
        "kind": "allocate",
        "req": req,
        "t0": t,
        "t1": t,
        "status": 201,
        "client_key": key,
        "body": {"status": "assigned", "session_id": sid, "streamer_id": streamer, "token": "x"},
    }


def _clean_history() -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    """Two sessions one after the other on h1/0 with a reset in between; one queued player
    served later; one refused. The checker must find nothing wrong."""
    history = [
        _alloc(1, "s-a", "h1-0", 10.0),
        {
            "kind": "heartbeat",
            "host": "h1",
            "t0": 12.0,
            "t1": 12.0,
            "status": 200,
            "body": {"reset": [{"index": 0, "session_id": "s-a"}], "draining": False},
        },
        {"kind": "reset_done", "slot": "h1/0", "session": "s-a", "t0": 12.1, "t1": 12.1},
        _alloc(2, "s-b", "h1-0", 12.5),
        {
            "kind": "allocate",
            "req": 3,
            "t0": 11.0,
            "t1": 11.0,
            "status": 202,
            "client_key": None,
            "body": {"status": "waiting", "ticket_id": "t-1", "position": 1, "eta_s": 1.0},
        },
        {
            "kind": "ticket_event",
            "req": 3,
            "t0": 14.0,
            "t1": 14.0,
            "status": 200,
            "body": {
                "status": "assigned",
                "ticket_id": "t-1",
                "session_id": "s-c",
                "streamer_id": "h1-1",
                "token": "x",
            },
        },
        {
            "kind": "allocate",
            "req": 4,
            "t0": 11.0,
            "t1": 11.0,
            "status": 429,
            "client_key": None,
            "body": {"error": "queue_full", "message": "full"},
        },
    ]
    records = [
        _rec("s-a", "h1/0", 10.0, 11.9),
        _rec("s-b", "h1/0", 12.4, 13.0),
        _rec("s-c", "h1/1", 13.9, 15.0, "never_connected"),
    ]
    final = {
        "slots": [
            {"slot_id": "h1/0", "state": "ready"},
            {"slot_id": "h1/1", "state": "resetting", "ended_session": "s-c"},
        ],
        "sessions": [],
        "queue": [],
    }
    return history, records, final


def test_checker_accepts_a_clean_history() -> None:
    history, records, final = _clean_history()
    result = check_history(history, records, final, slot_ids={"h1/0", "h1/1"})
    assert result.errors == []
    assert result.counts["served"] == 2 and result.counts["queued_then_served"] == 1
    assert result.counts["refused"] == {"queue_full": 1}


def test_checker_catches_a_double_assignment() -> None:
    history, records, final = _clean_history()
    # A third session on h1/0 claimed while s-b still held it.
    history.append(_alloc(5, "s-d", "h1-0", 12.8))
    records.append(_rec("s-d", "h1/0", 12.7, 13.5))
    errors = check_history(history, records, final, slot_ids={"h1/0", "h1/1"}).errors
    assert any("held by two sessions at once" in e and "s-b" in e and "s-d" in e for e in errors), errors


def test_checker_catches_a_skipped_reset() -> None:
    history, records, final = _clean_history()
    history = [e for e in history if e["kind"] != "reset_done"]
    errors = check_history(history, records, final, slot_ids={"h1/0", "h1/1"}).errors
    assert any("without the reset after s-a" in e for e in errors), errors


def _with_reset_done_at(t: float) -> list[str]:
    history, records, final = _clean_history()
    for e in history:
        if e["kind"] == "reset_done":
            e["t0"] = e["t1"] = t
    return check_history(history, records, final, slot_ids={"h1/0", "h1/1"}).errors


def test_checker_judges_a_reset_by_when_the_client_was_told() -> None:
    # s-b's record says 12.4 (the replica's clock before its store call); the client was
    # told at 12.5. A reset finished in between was reported before the claim could run.
    assert _with_reset_done_at(12.45) == []
    errors = _with_reset_done_at(12.6)
    assert any("without the reset after s-a" in e and "12.6" in e for e in errors), errors


def test_checker_catches_lost_requests_and_records() -> None:
    history, records, final = _clean_history()
    history.append(
        {
            "kind": "allocate",
            "req": 6,
            "t0": 1,
            "t1": 2,
            "status": None,
            "client_key": None,
            "body": None,
            "error": "ServerDisconnectedError",
        }
    )
    history.append(
        {
            "kind": "allocate",
            "req": 7,
            "t0": 1,
            "t1": 2,
            "status": 202,
            "client_key": None,
            "body": {"status": "waiting", "ticket_id": "t-7"},
        }
    )
    history.append(
        {
            "kind": "allocate",
            "req": 8,
            "t0": 1,
            "t1": 2,
            "status": 503,
            "client_key": None,
            "body": {"error": "backend_unavailable"},
        }
    )
    records.append(dict(records[0]))  # recorded twice
    records.append(_rec("s-ghost", "h1/1", 20.0, 21.0))  # nobody was given this session
    history.append(_alloc(9, "s-never", "h1-1", 30.0))  # served, never recorded
    errors = check_history(history, records, final, slot_ids={"h1/0", "h1/1"}).errors
    joined = "\n".join(errors)
    for needle in (
        "request 6: no outcome",
        "ticket t-7 never left the queue",
        "request 8: no outcome",
        "session s-a recorded 2 times",
        "never given to a client",
        "session s-never (request 9) was served but never recorded",
    ):
        assert needle in joined, (needle, errors)


def test_checker_catches_a_ticket_leaving_twice_and_a_bad_end_state() -> None:
    history, records, final = _clean_history()
    history.append({"kind": "cancel", "req": 3, "t0": 13.0, "t1": 13.0, "status": 200, "body": {"status": "cancelled"}})
    final["slots"][0] = {"slot_id": "h1/0", "state": "assigned", "session_id": "s-b"}
    final["slots"][1] = {"slot_id": "h1/1", "state": "resetting", "ended_session": None}
    final["sessions"] = [{"session_id": "s-b"}]
    errors = check_history(history, records, final, slot_ids={"h1/0", "h1/1"}).errors
    joined = "\n".join(errors)
    for needle in (
        "left WAITING more than once",
        "slot h1/0 ended the run assigned",
        "slot h1/1 ended the run resetting",
        "sessions still live at the end",
    ):
        assert needle in joined, (needle, errors)


def test_checker_catches_one_session_given_to_two_clients() -> None:
    history, records, final = _clean_history()
    history.append(_alloc(10, "s-a", "h1-0", 10.5, key="bob"))
    errors = check_history(history, records, final, slot_ids={"h1/0", "h1/1"}).errors
    assert any("given to requests" in e for e in errors), errors


# ================================================================================ the driver


def caller_token(tenant: str) -> str:
    return jwt.encode(
        {"tenant": tenant, "sub": "caller-1", "exp": int(time.time()) + 3600}, CALLER_SECRET, algorithm="HS256"
    )


class Replicas:
    """``pixelfleet matchmaker`` child processes; always stopped (finally)."""

    def __init__(self, n: int, state_url: str, prefix: str, folder: Path, env: dict[str, str]) -> None:
        self.n, self.state_url, self.prefix, self.folder, self.extra = n, state_url, prefix, folder, env
        self.children: list[Child] = []
        self.stop_s = 0.0

    def records_path(self, i: int) -> Path:
        return self.folder / f"records-{i}.jsonl"

    async def start(self, wait_s: float = 30.0) -> list[str]:
        env = {
            **os.environ,
            "PIXELFLEET_STATE_URL": self.state_url,
            "PIXELFLEET_MATCHMAKER__KEY_PREFIX": self.prefix,
            "PIXELFLEET_SESSION_TOKEN_SECRET": TOKEN_SECRET,
            "PIXELFLEET_AGENT_TOKEN": AGENT,
            "PIXELFLEET_ADMIN_TOKEN": ADMIN,
            "PIXELFLEET_MATCHMAKER__CALLER_JWT_SECRET": CALLER_SECRET,
            **{f"PIXELFLEET_MATCHMAKER__{k}": v for k, v in self.extra.items()},
        }
        bases = []
        for i in range(self.n):
            port = free_port()
            self.children.append(
                await start_child(
                    f"matchmaker {i}",
                    "matchmaker",
                    "--port",
                    str(port),
                    "--records",
                    str(self.records_path(i)),
                    "--log-level",
                    "warning",
                    "--log-format",
                    "json",
                    env=env,
                    log_path=self.folder / f"matchmaker-{i}.log",
                )
            )
            bases.append(f"http://127.0.0.1:{port}")
        async with aiohttp.ClientSession() as http:
            for child, base in zip(self.children, bases, strict=True):

                async def healthy(base: str = base) -> bool:
                    with contextlib.suppress(aiohttp.ClientError):
                        async with http.get(base + "/healthz") as r:
                            return r.status == 200
                    return False

                await child.wait_until(healthy, "a healthy /healthz", wait_s, period_s=0.1)
        return bases

    async def stop(self) -> list[int | None]:
        """SIGINT (graceful: the records are flushed), SIGKILL after 15 s; None = killed."""
        t0 = time.monotonic()
        codes = await asyncio.gather(*(child.stop(signal.SIGINT, 15.0) for child in self.children))
        self.stop_s = time.monotonic() - t0
        return list(codes)

    def records(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for i in range(self.n):
            path = self.records_path(i)
            if path.exists():
                out.extend(orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip())
        return out


class Driver:
    def __init__(self, sc: Scenario, bases: list[str], http: aiohttp.ClientSession) -> None:
        self.sc, self.bases, self.http = sc, bases, http
        self.rng = random.Random(sc.seed)
        self.history: list[dict[str, Any]] = []
        self.tokens = {t: caller_token(t) for t, _ in APPS}
        self.stop_agents = asyncio.Event()
        self.next_req = 0
        self.stats: collections.Counter[str] = collections.Counter()
        self.playing: collections.Counter[str] = collections.Counter()  # host -> players holding a slot there

    def _replica(self) -> int:
        return self.rng.randrange(len(self.bases))

    def log(self, **entry: Any) -> dict[str, Any]:
        self.history.append(entry)
        return entry

    async def call(
        self,
        kind: str,
        method: str,
        path: str,
        body: Any = None,
        token: str | None = None,
        *,
        limit_s: float = 15.0,
        **meta: Any,
    ) -> tuple[int | None, Any]:
        replica = self._replica()
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        t0 = time.time()
        entry = self.log(kind=kind, t0=t0, replica=replica, method=method, path=path, **meta)
        try:
            async with self.http.request(
                method,
                self.bases[replica] + path,
                data=None if body is None else orjson.dumps(body),
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=limit_s),
            ) as r:
                raw = await r.read()
                entry["status"] = r.status
                entry["body"] = orjson.loads(raw) if raw else None
        except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError) as exc:
            entry["status"], entry["body"], entry["error"] = None, None, repr(exc)
            self.stats["call_errors"] += 1
        entry["t1"] = time.time()
        return entry["status"], entry["body"]

    # --- GPU agents ---------------------------------------------------------------------

    async def agent(self, h: int) -> None:
        host = f"h{h}"
        n = self.sc.slots_per_host
        boot = f"{host}-boot0"
        boots = 0
        registered = False
        reset_for: list[str | None] = [None] * n
        pending: dict[int, str] = {}  # slot index -> session being reset
        failing: dict[int, int] = {}  # slot index -> beats left reporting dead
        self.agent_state[host] = state = {"dead_until": 0.0, "restart": False, "alive": True}

        async def reset(index: int, session: str) -> None:
            await asyncio.sleep(self.rng.uniform(0.02, 0.3))
            if pending.get(index) == session:
                reset_for[index] = session
                del pending[index]
                self.log(kind="reset_done", slot=f"{host}/{index}", session=session, t0=time.time(), t1=time.time())

        served = [APPS[(h + i) % len(APPS)] for i in range(n)]
        while not self.stop_agents.is_set():
            if state["dead_until"]:
                # Dead: silent until the killer's time is up (forever for a permanent death).
                if time.time() < state["dead_until"]:
                    await asyncio.sleep(0.05)
                    continue
                state["dead_until"] = 0.0
                registered = False
                boots += 1
                boot = f"{host}-boot{boots}"
                pending.clear()
                failing.clear()
                reset_for = [None] * n
            if not registered:
                status, _ = await self.call(
                    "register",
                    "POST",
                    "/api/v1/hosts",
                    registration_body(host, boot=boot, slots=served),
                    AGENT,
                    host=host,
                    boot=boot,
                )
                if status == 201:
                    registered = True
                    state["alive"] = True
                else:
                    self.stats[f"register_{status}"] += 1
                    await asyncio.sleep(0.2)
                    continue
            if failing == {} and self.fail_slot.pop(host, False):
                i = self.rng.randrange(n)
                failing[i] = 4
                self.log(kind="slot_dead", slot=f"{host}/{i}", t0=time.time(), t1=time.time())
            slots = []
            for i in range(n):
                if i in failing:
                    slots.append({"index": i, "state": "dead"})
                else:
                    slots.append(
                        {
                            "index": i,
                            "state": "resetting" if i in pending else "ready",
                            "reset_for": reset_for[i],
                            "nvenc_load": round(self.rng.random(), 2),
                        }
                    )
            for i in list(failing):
                failing[i] -= 1
                if failing[i] <= 0:
                    del failing[i]
                    pending.pop(i, None)
            status, reply = await self.call(
                "heartbeat",
                "POST",
                f"/api/v1/hosts/{host}/heartbeat",
                {"boot_id": boot, "slots": slots},
                AGENT,
                host=host,
                boot=boot,
            )
            if status == 200:
                for r in reply["reset"]:
                    if pending.get(r["index"]) != r["session_id"] and reset_for[r["index"]] != r["session_id"]:
                        pending[r["index"]] = r["session_id"]
                        asyncio.ensure_future(reset(r["index"], r["session_id"]))
            elif status == 404:
                # Declared dead (we were slow, or killed): come back as a fresh boot.
                self.stats["declared_dead_while_beating"] += 1
                state["dead_until"] = time.time()
            else:
                self.stats[f"heartbeat_{status}"] += 1
            await asyncio.sleep(self.sc.beat_s * self.rng.uniform(0.8, 1.2))

    async def killer(self, load_s: float) -> None:
        """Host deaths (and slot failures) spread over the load phase."""
        sc = self.sc
        events = sorted(
            [("death", self.rng.uniform(0.15, 0.7) * load_s) for _ in range(sc.deaths)]
            + [("fail", self.rng.uniform(0.1, 0.8) * load_s) for _ in range(sc.slot_failures)],
            key=lambda x: x[1],
        )
        start = time.monotonic()
        permanent = sc.permanent_deaths
        for what, at in events:
            await asyncio.sleep(max(0.0, at - (time.monotonic() - start)))
            alive = [h for h, s in self.agent_state.items() if not s["dead_until"] and s["alive"]]
            if not alive:
                continue
            # Kill where players are (a death with nobody on board proves little).
            busiest = max(self.playing[h] for h in alive)
            host = self.rng.choice([h for h in alive if self.playing[h] == busiest])
            if what == "fail":
                self.fail_slot[host] = True
                self.stats["slot_failures"] += 1
                continue
            s = self.agent_state[host]
            s["alive"] = False
            if permanent:
                permanent -= 1
                s["dead_until"] = float("inf")
                self.stats["host_deaths_permanent"] += 1
            else:
                # Half come back at once with a new boot id (409 until the old one is declared
                # dead), half after the TTL has passed.
                s["dead_until"] = time.time() + self.rng.choice([0.05, self.rng.uniform(1.8, 3.0)])
                self.stats["host_deaths"] += 1
            self.log(kind="kill", host=host, t0=time.time(), t1=time.time())

    # --- players ------------------------------------------------------------------------

    def new_req(self) -> int:
        self.next_req += 1
        return self.next_req

    async def player(self) -> None:
        rng = self.rng
        tenant, app = rng.choice(APPS)
        profile = rng.choices(["stay", "reconnect", "ghost", "long", "admin", "unknown"], [48, 12, 15, 8, 6, 2])[0]
        if profile == "unknown":
            app = "nope"
        key = f"k{self.next_req + 1}" if profile == "reconnect" or rng.random() < 0.3 else None
        session = await self.allocate(tenant, app, key)
        if session is None:
            return
        host = session["streamer_id"].rsplit("-", 1)[0]
        self.playing[host] += 1
        try:
            await self.play(session, profile, tenant, app, key, host)
        finally:
            self.playing[host] -= 1

    async def linger_if_host_dead(self, host: str) -> None:
        """A player whose host died sees a frozen stream: the matchmaker, not the player,
        ends that session (HOST_DEAD), so the player does not hang up first (bounded)."""
        for _ in range(40):
            if self.agent_state.get(host, {}).get("alive", True):
                return
            await asyncio.sleep(0.1)

    async def play(
        self, session: dict[str, Any], profile: str, tenant: str, app: str, key: str | None, host: str
    ) -> None:
        rng = self.rng
        sid, token = session["session_id"], session["token"]
        if profile == "ghost":
            return
        await asyncio.sleep(rng.uniform(0.0, 0.3))
        await self.event(sid, token, "connected")
        if profile == "long":
            await asyncio.sleep(3.5)
        elif profile == "admin":
            await asyncio.sleep(rng.uniform(0.2, 1.0))
            await self.call("admin_end", "DELETE", f"/api/v1/admin/sessions/{sid}", token=ADMIN, session=sid)
            return
        else:
            await asyncio.sleep(rng.uniform(0.1, 1.0))
        await self.linger_if_host_dead(host)
        await self.event(sid, token, "disconnected")
        if profile == "reconnect":
            await asyncio.sleep(rng.uniform(0.02, 0.2))  # inside the grace period, mostly
            again = await self.allocate(tenant, app, key)
            if again is None:
                return
            if again["session_id"] == sid:
                self.stats["reconnected_same_session"] += 1
            await self.event(again["session_id"], again["token"], "connected")
            await asyncio.sleep(rng.uniform(0.1, 0.6))
            await self.event(again["session_id"], again["token"], "disconnected")

    async def event(self, sid: str, token: str, event: str) -> None:
        status, _ = await self.call(
            "session_event", "POST", f"/api/v1/sessions/{sid}/events", {"event": event}, token, session=sid, event=event
        )
        if status != 200:
            self.stats[f"session_event_{status}"] += 1

    async def allocate(self, tenant: str, app: str, key: str | None) -> dict[str, Any] | None:
        req = self.new_req()
        body: dict[str, Any] = {"app": app, "region": "eu"}
        if key:
            body["client_key"] = key
        status, reply = await self.call(
            "allocate",
            "POST",
            "/api/v1/sessions",
            body,
            self.tokens[tenant],
            req=req,
            client_key=key,
            tenant=tenant,
            app=app,
        )
        if status == 201:
            return reply  # type: ignore[no-any-return]
        if status == 202:
            return await self.wait_in_queue(req, reply, self.tokens[tenant])
        return None

    async def wait_in_queue(self, req: int, queued: dict[str, Any], token: str) -> dict[str, Any] | None:
        """Follow, poll or cancel the ticket, as its caller (``token``: the ticket is its own)."""
        rng = self.rng
        tid = queued["ticket_id"]
        mode = rng.choices(["sse", "poll", "cancel"], [5, 3, 2])[0]
        patience = rng.uniform(0.3, 5.0)
        deadline = time.monotonic() + patience
        if mode == "sse":
            replica = self._replica()
            entry = self.log(kind="sse_open", req=req, t0=time.time(), replica=replica)
            try:
                async with self.http.get(
                    self.bases[replica] + f"/api/v1/queue/{tid}/events",
                    headers={"Authorization": f"Bearer {token}"},
                    timeout=aiohttp.ClientTimeout(total=patience),
                ) as r:
                    entry["status"] = r.status
                    async for line in r.content:
                        if line.startswith(b"data: "):
                            data = orjson.loads(line[6:])
                            self.log(
                                kind="ticket_event",
                                req=req,
                                t0=time.time(),
                                t1=time.time(),
                                status=200,
                                body=data,
                                replica=replica,
                            )
                            if data["status"] == "assigned":
                                return data  # type: ignore[no-any-return]
                            if data["status"] != "waiting":
                                return None
            except (aiohttp.ClientError, TimeoutError) as exc:
                entry["error"] = repr(exc)  # patience ran out: hanging up cancels the ticket
            entry["t1"] = time.time()
        elif mode == "poll":
            while time.monotonic() < deadline:
                status, body = await self.call("ticket", "GET", f"/api/v1/queue/{tid}", token=token, req=req)
                if status == 200 and body["status"] != "waiting":
                    return body if body["status"] == "assigned" else None
                await asyncio.sleep(0.25)
        else:
            await asyncio.sleep(rng.uniform(0.0, 1.0))
        if mode != "sse":
            status, _ = await self.call("cancel", "DELETE", f"/api/v1/queue/{tid}", token=token, req=req)
            if status == 200:
                return None
        # Find out how the ticket left the queue (the cancel may have lost a race with a
        # dispatch; a hung-up SSE client's ticket is cancelled by the server, soon).
        for _ in range(40):
            status, body = await self.call("ticket", "GET", f"/api/v1/queue/{tid}", token=token, req=req)
            if status == 200 and body["status"] != "waiting":
                return body if body["status"] == "assigned" else None
            await asyncio.sleep(0.1)
        return None

    # --- the run ------------------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        sc = self.sc
        self.agent_state: dict[str, dict[str, Any]] = {}
        self.fail_slot: dict[str, bool] = {}
        agents = [asyncio.create_task(self.agent(h)) for h in range(sc.hosts)]
        players: set[asyncio.Task[None]] = set()
        slots_free = asyncio.Semaphore(sc.max_players)
        t_start = time.monotonic()
        try:
            await asyncio.sleep(1.0)  # every host registered and warm
            killer = asyncio.create_task(self.killer(sc.load_s))
            paced = sc.requests - sc.bursts * sc.burst
            burst_at = {int(paced * (k + 1) / (sc.bursts + 1)) for k in range(sc.bursts)}
            interval = sc.load_s / max(paced, 1)
            load_start = time.monotonic()
            spawned = 0

            def finished(task: asyncio.Task[None]) -> None:
                players.discard(task)
                slots_free.release()

            def spawn() -> None:
                task = asyncio.create_task(self.player())
                players.add(task)
                task.add_done_callback(finished)

            for i in range(paced):
                if time.monotonic() - load_start > sc.load_s * 1.3:
                    break  # behind schedule: stop (bounded); the counts say how many went out
                n = sc.burst if i in burst_at else 1
                for _ in range(n):
                    await slots_free.acquire()
                    spawn()
                    spawned += 1
                delay = load_start + (i + 1) * interval - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            load_wall = time.monotonic() - load_start
            await asyncio.wait_for(killer, 10)
            # Players finish on their own (every wait is bounded).
            if players:
                done, pending = await asyncio.wait(set(players), timeout=30)
                for t in pending:
                    t.cancel()
                self.stats["players_cut_off"] += len(pending)
                for t in done:
                    if t.exception() is not None:
                        self.stats["player_crashed"] += 1
                        self.log(kind="player_crash", t0=time.time(), t1=time.time(), error=repr(t.exception()))
            # Dead hosts that will come back must be back before the end state is read.
            for _ in range(100):
                if not any(not s["alive"] and s["dead_until"] != float("inf") for s in self.agent_state.values()):
                    break
                await asyncio.sleep(0.1)
            # The operator ends whatever is left, then the agents finish their resets.
            for _ in range(20):
                status, sessions = await self.call("admin_sessions", "GET", "/api/v1/admin/sessions", token=ADMIN)
                if status == 200 and not sessions:
                    break
                for s in sessions or []:
                    await self.call(
                        "admin_end",
                        "DELETE",
                        f"/api/v1/admin/sessions/{s['session_id']}",
                        token=ADMIN,
                        session=s["session_id"],
                    )
                await asyncio.sleep(0.1)
            for _ in range(40):
                status, slots = await self.call("admin_slots", "GET", "/api/v1/admin/slots", token=ADMIN)
                if status == 200 and not any(s["state"] in ("resetting", "assigned", "starting") for s in slots):
                    break
                await asyncio.sleep(0.1)
            await asyncio.sleep(sc.beat_s * 2)
        finally:
            self.stop_agents.set()
            for t in players:
                t.cancel()
            await asyncio.gather(*agents, *players, return_exceptions=True)
        final = {}
        for name in ("slots", "sessions", "queue", "hosts"):
            status, body = await self.call(f"admin_{name}", "GET", f"/api/v1/admin/{name}", token=ADMIN)
            assert status == 200, (name, status, body)
            final[name] = body
        return {"final": final, "spawned": spawned, "load_wall_s": load_wall, "wall_s": time.monotonic() - t_start}


async def run_scenario(sc: Scenario, state_url: str, folder: Path) -> tuple[CheckResult, dict[str, Any]]:
    prefix = f"cc{uuid.uuid4().hex[:8]}"
    replicas = Replicas(sc.replicas, state_url, prefix, folder, sc.env)
    t0 = time.monotonic()
    try:
        bases = await replicas.start()
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=0)
        async with aiohttp.ClientSession(connector=connector) as http:
            driver = Driver(sc, bases, http)
            out = await driver.run()
    finally:
        codes = await replicas.stop()
    records = replicas.records()
    (folder / "history.jsonl").write_bytes(b"\n".join(orjson.dumps(e) for e in driver.history))
    slot_ids = {f"h{h}/{i}" for h in range(sc.hosts) for i in range(sc.slots_per_host)}
    result = check_history(driver.history, records, out["final"], slot_ids=slot_ids)
    result.counts.update(
        {
            "spawned_players": out["spawned"],
            "host_deaths": driver.stats["host_deaths"] + driver.stats["host_deaths_permanent"],
            "host_deaths_permanent": driver.stats["host_deaths_permanent"],
            "declared_dead_while_beating": driver.stats["declared_dead_while_beating"],
            "slot_failures": driver.stats["slot_failures"],
            "reconnected_same_session": driver.stats["reconnected_same_session"],
            "heartbeats": sum(1 for e in driver.history if e["kind"] == "heartbeat"),
            "http_calls": sum(1 for e in driver.history if "replica" in e),
            "call_errors": driver.stats["call_errors"],
            "driver_stats": dict(driver.stats),
            "replica_exit_codes": codes,
            "replica_stop_s": round(replicas.stop_s, 1),
            "load_wall_s": round(out["load_wall_s"], 1),
            "wall_s": round(time.monotonic() - t0, 1),
        }
    )
    return result, out


def test_four_replicas_never_give_one_slot_to_two_players(redis_url: str, tmp_path: Path) -> None:
    sc = Scenario()
    if os.environ.get("PF_MM_CONCURRENCY_SCALE"):  # quick local runs: a fraction of the load
        f = float(os.environ["PF_MM_CONCURRENCY_SCALE"])
        sc.requests, sc.load_s, sc.burst = int(sc.requests * f), sc.load_s * f, int(sc.burst * f)
    result, _ = asyncio.run(run_scenario(sc, redis_url, tmp_path))
    c = result.counts
    print("\nmatchmaker concurrency:", json.dumps(c, indent=1, default=str))
    assert not result.errors, "\n".join(result.errors[:40]) + f"\n({len(result.errors)} errors; history in {tmp_path})"
    assert c["replica_exit_codes"] == [0] * sc.replicas
    # The run did what it claims: contention, queueing, every kind of ending, host deaths.
    # Floors are far below a quiet run's (about 3,000 requests, 1,400 served), so a slow,
    # busy machine does a smaller run but never fails on speed; the invariants are the test.
    assert c["requests"] >= 300
    assert c["served"] + c["queued_then_served"] >= 50 and c["queued_then_served"] >= 5
    assert c["double_assignments"] == 0 and c["refused"].get("queue_full", 0) > 0
    assert c["host_deaths"] >= sc.deaths - 1 and c["lost"] == 0 and c["call_errors"] == 0
    for reason in ("player_left", "never_connected", "host_dead", "force_ended", "max_session_length"):
        assert c["ended_by_reason"].get(reason, 0) > 0, reason
