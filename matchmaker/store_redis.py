"""Redis store: any number of matchmaker replicas over one Redis or Redis Cluster.

Same semantics as ``MemoryStore``; every state transition is one server-side Lua script
(``matchmaker/lua/``). The key layout, what each script guarantees, the host-death steps
and the differences from ``MemoryStore``: docs/matchmaker-store.md.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Sequence
from typing import Any

import msgspec
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster

from matchmaker.models import AllocationRequest, EndReason, Session, Slot, Ticket, TicketState
from matchmaker.redis_base import DEFAULT_TIMEOUT_S, DEFAULT_WAIT_MS, Call, cmd, guarded, names, num, text
from matchmaker.redis_hosts import RedisHosts
from matchmaker.redis_keys import session_template
from matchmaker.store import NoClaim, QueueFull, Returning
from pixelfleet.redis_sentinel import parse_sentinel_url, sentinel_primary
from pixelfleet.redis_url import split_cluster_flag

__all__ = ["DEFAULT_MAX_CONNECTIONS", "FINISHED_TICKET_TTL_S", "RedisStore"]

FINISHED_TICKET_TTL_S = 3600
DEFAULT_MAX_CONNECTIONS = 256

_enc = msgspec.json.Encoder()
_slots = msgspec.json.Decoder(list[Slot])
_session = msgspec.json.Decoder(Session)
_sessions = msgspec.json.Decoder(list[Session])
_ticket = msgspec.json.Decoder(Ticket)
_NO_CLAIM = {
    "queued": NoClaim.QUEUE_AHEAD,
    "none": NoClaim.NO_SLOT,
    "unknown": NoClaim.UNKNOWN_APP,
    "refused": NoClaim.REFUSED,
}


def _joined(vals: Sequence[bytes]) -> bytes:
    return b"[" + b",".join(vals) + b"]"


class RedisStore(RedisHosts):
    """The Store interface over Redis or Redis Cluster (docs/matchmaker-store.md)."""

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        prefix: str = "pf",
        timeout_s: float = DEFAULT_TIMEOUT_S,
        wait_replicas: int = 0,
        wait_ms: int = DEFAULT_WAIT_MS,
    ) -> RedisStore:
        """``redis://``, ``rediss://``, ``unix://``; ``?cluster=1`` picks Redis Cluster.
        ``wait_replicas``: each round trip's writes are on that many replicas before its
        callers hear of them (``WAIT``), or the round trip fails (``NotReplicated``)."""
        url, cluster = split_cluster_flag(url)
        sentinel = parse_sentinel_url(url)  # ?sentinel=<name>: follow the primary across failovers
        if sentinel is not None and cluster:
            raise ValueError("a state URL names Redis Cluster or Sentinel, not both")
        store = functools.partial(cls, prefix=prefix, timeout_s=timeout_s, wait_replicas=wait_replicas, wait_ms=wait_ms)
        if sentinel is not None:
            return store(sentinel_primary(sentinel))
        if cluster:
            return store(RedisCluster.from_url(url))
        # redis-py's default pool fails at 100 connections in use; this one waits for
        # a free connection instead (within the operation's timeout).
        pool: dict[str, Any] = {"timeout": None}
        if "max_connections=" not in url:
            pool["max_connections"] = DEFAULT_MAX_CONNECTIONS
        return store(Redis.from_pool(BlockingConnectionPool.from_url(url, **pool)))

    # --- pool -------------------------------------------------------------------------

    @guarded
    async def serves(self, tenant: str, app: str) -> bool:
        n = await self._r.hget(self._keys(tenant).apps, app)
        return n is not None and int(n) > 0

    @guarded
    async def slot_count(self, tenant: str, app: str) -> int:
        n = await self._r.hget(self._keys(tenant).live, app)
        return 0 if n is None else max(int(n), 0)

    def _allocate_calls(
        self,
        request: AllocationRequest,
        session_id: str,
        now: float,
        *,
        policy: str,
        rnd: float,
        ticket_id: str | None = None,
        heartbeat_ttl_s: float | None = None,
    ) -> list[Call]:
        """One allocation as sent: the session's tenant lookup, then the allocation script
        (pipelined, one round trip). The benchmark's ceiling sends exactly these."""
        keys = self._keys(request.tenant)
        region = request.region or ""
        kl: tuple[str | bytes, ...] = keys.allocate(request.app, region)
        if ticket_id:
            kl = (*kl, keys.ticket(ticket_id))
        return [
            cmd("SET", self._g.session_tenant(session_id), request.tenant),
            (
                self._scripts.allocate,
                kl,
                [
                    session_id,
                    request.app,
                    request.client_key or "",
                    region,
                    request.gpu_model or "",
                    policy,
                    repr(rnd),
                    num(now),
                    ticket_id or "",
                    FINISHED_TICKET_TTL_S,
                    "" if heartbeat_ttl_s is None else num(heartbeat_ttl_s),
                    session_template(request, session_id, now),
                ],
            ),
        ]

    async def _after_claim(self, claimed: bool, tenant: str, session_id: str, ticket_id: str | None) -> None:
        if not claimed:
            await self._r.delete(self._g.session_tenant(session_id))
            return
        self._remember(self._session_tenant, session_id, tenant)
        if ticket_id is not None:
            await self._r.expire(self._g.ticket_tenant(ticket_id), FINISHED_TICKET_TTL_S)

    @guarded
    async def allocate(
        self,
        request: AllocationRequest,
        session_id: str,
        now: float,
        *,
        policy: str,
        ticket_id: str | None = None,
        heartbeat_ttl_s: float | None = None,
    ) -> Session | Returning | NoClaim:
        calls = self._allocate_calls(
            request,
            session_id,
            now,
            policy=policy,
            rnd=random.random(),
            ticket_id=ticket_id,
            heartbeat_ttl_s=heartbeat_ttl_s,
        )
        reply = (await self._batch(calls))[1]
        status = text(reply[0])
        await self._after_claim(status == "ok", request.tenant, session_id, ticket_id)
        if status == "ok":
            return _session.decode(reply[1])
        if status == "client":
            return Returning(text(reply[1]))
        return _NO_CLAIM[status]

    # --- sessions ---------------------------------------------------------------------

    @guarded
    async def session(self, session_id: str) -> Session | None:
        keys = await self._session_keys(session_id)
        raw = None if keys is None else await self._one(cmd("HGET", keys.sessions, session_id))
        return None if raw is None else _session.decode(raw)

    async def _session_op(self, op: str, session_id: str, now: float) -> Any:
        keys = await self._session_keys(session_id)
        if keys is None:
            return None
        # Through ``_batch``: the reports of one batched request share one round trip.
        return (await self._batch([(self._scripts.session_op, keys.session_index, (op, session_id, num(now)))]))[0]

    @guarded
    async def reattach(self, session_id: str, now: float) -> Session | None:
        raw = await self._session_op("reattach", session_id, now)
        return None if raw is None else _session.decode(raw)

    @guarded
    async def mark_connected(self, session_id: str, now: float) -> Session | None:
        raw = await self._session_op("connect", session_id, now)
        return None if raw is None else _session.decode(raw)

    @guarded
    async def mark_disconnected(self, session_id: str, now: float) -> Session | None:
        raw = await self._session_op("disconnect", session_id, now)
        return None if raw is None else _session.decode(raw)

    @guarded
    async def touch(self, session_id: str, now: float) -> None:
        await self._session_op("touch", session_id, now)

    @guarded
    async def end_reason(self, tenant: str, session_id: str) -> EndReason | None:
        raw = await self._one(cmd("GET", self._keys(tenant).ended(session_id)))
        return None if raw is None else EndReason(text(raw))

    @guarded
    async def end_session(
        self, session_id: str, reason: EndReason, now: float, *, if_unchanged: Session | None = None
    ) -> Session | None:
        # A guard is the session as the store listed it: its tenant saves the lookup.
        keys = self._keys(if_unchanged.tenant) if if_unchanged is not None else await self._session_keys(session_id)
        if keys is None:
            return None
        args: list[str] = [session_id, EndReason(reason).value, num(now)]
        if if_unchanged is not None:
            seen = if_unchanged
            args += [
                str(seen.state),
                num(seen.last_activity),
                "" if seen.disconnected_at is None else num(seen.disconnected_at),
            ]
            raw = await self._one((self._scripts.end_session, keys.block, args))
            if not raw:
                return None
            self._session_tenant.pop(session_id, None)
            await self._one(cmd("DEL", self._g.session_tenant(session_id)))
            return _session.decode(raw)
        self._session_tenant.pop(session_id, None)
        raw, _ = await self._batch(
            [(self._scripts.end_session, keys.block, args), cmd("DEL", self._g.session_tenant(session_id))]
        )
        return None if raw is None else _session.decode(raw)

    @guarded
    async def due_sessions(
        self,
        now: float,
        *,
        connect_timeout_s: float,
        reconnect_grace_s: float,
        idle_timeout_s: float,
        max_session_s: float,
        limit: int,
    ) -> list[Session]:
        if limit <= 0:
            return []
        args = [
            num(now),
            num(connect_timeout_s),
            num(reconnect_grace_s),
            num(idle_timeout_s),
            num(max_session_s),
            int(limit),
        ]
        calls: list[Call] = [
            (self._scripts.due_sessions, self._keys(t).session_index, args) for t in await self._tenants()
        ]
        found: list[tuple[float, bytes]] = []
        for flat in await self._batch(calls):
            found += [(float(flat[i]), flat[i + 1]) for i in range(0, len(flat), 2)]
        found.sort(key=lambda f: -f[0])  # the most overdue of all tenants; decode only those
        return _sessions.decode(_joined([raw for _, raw in found[:limit]]))

    # --- queue ------------------------------------------------------------------------

    @guarded
    async def enqueue(self, ticket: Ticket, max_length: int) -> tuple[Ticket, int]:
        tenant, app, tid = ticket.request.tenant, ticket.request.app, ticket.ticket_id
        keys = self._keys(tenant)
        lookup = self._g.ticket_tenant(tid)
        _, _, (n, existed, mine) = await self._batch(
            [
                cmd("SADD", self._g.tenants, tenant),
                cmd("SET", lookup, _enc.encode((tenant, app))),
                (
                    self._scripts.enqueue,
                    [keys.queue(app), keys.ticket(tid), keys.qseq, keys.queues, keys.qclients(app)],
                    [
                        tid,
                        _enc.encode(ticket),
                        int(max_length),
                        app,
                        ticket.request.client_key or "",
                        num(ticket.enqueued_at),
                    ],
                ),
            ],
            ordered=True,
        )
        if int(n) < 0 or mine:
            if not int(existed):
                await self._r.delete(lookup)
            if mine:  # the client's own waiting ticket came back; the new id was never used
                return _ticket.decode(mine), int(n)
            raise QueueFull(f"the queue for {app} is full ({max_length} waiting)")
        self._remember(self._ticket_tenant, tid, (tenant, app))
        return ticket, int(n)

    @guarded
    async def ticket(self, ticket_id: str) -> Ticket | None:
        found = await self._ticket_keys(ticket_id)
        raw = None if found is None else await self._one(cmd("GET", found[0].ticket(ticket_id)))
        return None if raw is None else _ticket.decode(raw)

    async def _mark_ticket(self, op: str, ticket_id: str, now: float) -> bool:
        found = await self._ticket_keys(ticket_id)
        if found is None:
            return False
        return bool(int(await self._one((self._scripts.ticket_mark, [found[0].ticket(ticket_id)], [op, num(now)]))))

    @guarded
    async def ticket_heard(self, ticket_id: str, now: float) -> bool:
        return await self._mark_ticket("heard", ticket_id, now)

    @guarded
    async def ticket_left(self, ticket_id: str, now: float) -> bool:
        return await self._mark_ticket("left", ticket_id, now)

    @guarded
    async def position(self, ticket_id: str) -> int | None:
        found = await self._ticket_keys(ticket_id)
        if found is None:
            return None
        keys, app = found
        res = await self._one((self._scripts.position, [keys.ticket(ticket_id), keys.queue(app)], [ticket_id]))
        return None if res is None else int(res)

    @guarded
    async def waiting(self, tenant: str, app: str, limit: int) -> list[Ticket]:
        if limit <= 0:
            return []
        keys = self._keys(tenant)
        ids = names(await self._r.zrange(keys.queue(app), 0, int(limit) - 1))
        raws = await self._batch([cmd("GET", keys.ticket(i)) for i in ids])
        return [_ticket.decode(r) for r in raws if r is not None]

    @guarded
    async def queues(self) -> list[tuple[str, str, int]]:
        tenants = await self._tenants()
        apps = await self._batch([cmd("SMEMBERS", self._keys(t).queues) for t in tenants])
        calls: list[Call] = []
        for tenant, members in zip(tenants, apps, strict=True):
            keys, listed = self._keys(tenant), sorted(names(members))
            calls.append((self._scripts.queue_lengths, [keys.queues, *map(keys.queue, listed)], listed))
        out: list[tuple[str, str, int]] = []
        for tenant, flat in zip(tenants, await self._batch(calls), strict=True):
            out += [(tenant, text(flat[i]), int(flat[i + 1])) for i in range(0, len(flat), 2)]
        return out

    @guarded
    async def finish_ticket(
        self, ticket_id: str, state: str, reason: str, *, if_unchanged: Ticket | None = None
    ) -> bool:
        try:
            final = TicketState(state)
        except ValueError:
            # As the memory store: an unknown state only fails on a ticket still waiting.
            if await self.position(ticket_id) is not None:
                raise
            return False
        found = await self._ticket_keys(ticket_id)
        if found is None:
            return False
        keys, app = found
        kl = [keys.ticket(ticket_id), keys.queue(app), keys.queues, keys.qclients(app)]
        args: list[str | int] = [ticket_id, final.value, reason, FINISHED_TICKET_TTL_S]
        if if_unchanged is not None:
            # The lookup may only start to expire once the ticket has surely left WAITING.
            seen, left = if_unchanged.seen_at, if_unchanged.left_at
            args += ["1", "" if seen is None else num(seen), "" if left is None else num(left)]
            if not int(await self._scripts.finish_ticket(kl, args)):
                return False
            await self._r.expire(self._g.ticket_tenant(ticket_id), FINISHED_TICKET_TTL_S)
            return True
        done, _ = await self._batch(
            [
                (self._scripts.finish_ticket, kl, args),
                cmd("EXPIRE", self._g.ticket_tenant(ticket_id), str(FINISHED_TICKET_TTL_S)),
            ]
        )
        return bool(int(done))

    # --- records ----------------------------------------------------------------------

    @guarded
    async def take_records(self, now: float, lease_s: float, limit: int) -> list[Session]:
        calls: list[Call] = [
            (
                self._scripts.take_records,
                [self._keys(t).recq, self._keys(t).rec],
                [num(now), num(now + lease_s), int(limit)],
            )
            for t in await self._tenants()
        ]
        out: list[Session] = []
        for raws in await self._batch(calls):
            out += [_session.decode(raw) for raw in raws]
        return out

    @guarded
    async def ack_records(self, sessions: Sequence[Session]) -> None:
        by_tenant: dict[str, list[str]] = {}
        for s in sessions:
            by_tenant.setdefault(s.tenant, []).append(s.session_id)
        await self._batch(
            [(self._scripts.ack_records, [self._keys(t).recq, self._keys(t).rec], ids) for t, ids in by_tenant.items()]
        )

    # --- listings ---------------------------------------------------------------------

    @guarded
    async def slots(self) -> list[Slot]:
        out: list[Slot] = []
        for vals in await self._batch([cmd("HVALS", self._keys(t).slots) for t in await self._tenants()]):
            out += _slots.decode(_joined(vals))
        # A slot on a registered GPU carries its GPU's last report (heartbeats write the
        # GPU's load once, not into each of its slots).
        keys = sorted({self._keys(s.tenant).gpu_loads(s.host_id) for s in out if s.gpu is not None})
        loads: dict[tuple[str, str], tuple[float, float]] = {}
        for key, got in zip(keys, await self._batch([cmd("HGETALL", k) for k in keys]), strict=True):
            pairs = got.items() if isinstance(got, dict) else zip(got[::2], got[1::2], strict=True)
            for gpu_index, value in pairs:
                nvenc, gpu = text(value).split(",")
                loads[(key, text(gpu_index))] = (float(nvenc), float(gpu))
        for slot in out:
            if slot.gpu is not None:
                load = loads.get((self._keys(slot.tenant).gpu_loads(slot.host_id), str(slot.gpu)))
                slot.nvenc_load, slot.gpu_load = load if load is not None else (0.0, 0.0)
        return out

    @guarded
    async def sessions(self) -> list[Session]:
        out: list[Session] = []
        for vals in await self._batch([cmd("HVALS", self._keys(t).sessions) for t in await self._tenants()]):
            out += _sessions.decode(_joined(vals))
        return out
