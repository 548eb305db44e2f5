"""Host operations of the Redis store: the registry script on ``{P}``, then each tenant's
copy brought up to it (the steps and why they are safe: docs/matchmaker-store.md)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import msgspec

from matchmaker.models import (
    Heartbeat,
    HeartbeatReply,
    Host,
    HostRegistration,
    Session,
    Slot,
    SlotReset,
    registered_slot,
    slot_id,
)
from matchmaker.redis_base import CACHE_MAX, Call, RedisBase, cmd, guarded, names, num, text
from matchmaker.store import HostConflict, UnknownHost

_HB_SLACK_S = 1.0

_enc = msgspec.json.Encoder()
_host = msgspec.json.Decoder(Host)
_session = msgspec.json.Decoder(Session)
_strmap = msgspec.json.Decoder(dict[str, list[str]])
_specs = msgspec.json.Decoder(dict[str, list[Slot]])
_strs = msgspec.json.Decoder(list[str])


class _Meta(msgspec.Struct, frozen=True):
    host_id: str
    host: Host
    ver: int
    inc: int
    specs: dict[str, list[Slot]]
    old: list[str]
    order: float


class _SlotMap(msgspec.Struct, frozen=True):
    """One incarnation's slots as a heartbeat needs them (fixed until it registers anew)."""

    mark: str  # heartbeat_host.lua: never the same for two incarnations of a host
    tenants: list[str]
    tenant_of: dict[str, str]  # slot id -> tenant
    place: dict[str, int]  # slot id -> its position in Host.slot_ids (the reply's order)

    @classmethod
    def of(cls, mark: str, tmap: dict[str, list[str]], host: Host) -> _SlotMap:
        return cls(
            mark,
            list(tmap),
            {sid: tenant for tenant, sids in tmap.items() for sid in sids},
            {sid: i for i, sid in reversed(list(enumerate(host.slot_ids)))},
        )


def _bound(now: float, span: float) -> str:
    """A hair above ``now - span`` (rounding): the script's exact test decides."""
    return repr(now - span + (abs(now) + abs(span)) * 1e-14)


class RedisHosts(RedisBase):
    """register, heartbeat, drain, expire and forget hosts; list them."""

    # host id -> its current incarnation's slot map: a heartbeat gets the map from Redis
    # only when this replica does not hold that incarnation's already.
    _slot_maps: dict[str, _SlotMap]

    def _slot_map(self, host_id: str) -> _SlotMap | None:
        try:
            return self._slot_maps.get(host_id)
        except AttributeError:
            self._slot_maps = {}
            return None

    def _keep_slot_map(self, host_id: str, m: _SlotMap) -> None:
        if len(self._slot_maps) > CACHE_MAX:
            self._slot_maps.clear()
        self._slot_maps[host_id] = m

    def _forget_sessions(self, ended: Iterable[Session]) -> list[Call]:
        dels: list[Call] = []
        for s in ended:
            self._session_tenant.pop(s.session_id, None)
            dels.append(cmd("DEL", self._g.session_tenant(s.session_id)))
        return dels

    async def _to_outbox(self, ended: Sequence[Session]) -> None:
        """Sessions ended by a step no caller returns (only after a crash) wait for the sweep."""
        if ended:
            await self._r.rpush(self._g.outbox, *(_enc.encode(s) for s in ended))

    async def _propagate(self, host_ids: Sequence[str], now: float | None) -> list[Session]:
        """Bring every tenant's copy of these hosts up to their records (idempotent).

        Without ``now`` (``set_draining`` has no clock) a dead host is left to the next
        sweep, which ends its sessions at the sweep's time, and anything else that ends
        (an older incarnation's leftovers after a crash) ends at the host's last heartbeat."""
        if not host_ids:
            return []
        g, sc = self._g, self._scripts
        rows = await sc.host_meta([g.hosts, *map(g.host, host_ids)], list(host_ids))
        metas = [
            _Meta(
                text(hid), _host.decode(rec), int(ver), int(inc), _specs.decode(specs), _strs.decode(old), float(order)
            )
            for hid, rec, ver, inc, specs, old, _tmap, order in rows
        ]
        metas.sort(key=lambda m: m.order)
        if now is None:
            metas = [m for m in metas if not m.host.dead]
        calls: list[Call] = []
        owners: list[_Meta] = []
        for m in metas:
            for tenant in list(m.specs) + [t for t in m.old if t not in m.specs]:
                calls.append(
                    (
                        sc.apply_host,
                        self._keys(tenant).host_block(m.host_id),
                        [
                            m.host_id,
                            m.inc,
                            m.ver,
                            "1" if m.host.draining else "0",
                            "1" if m.host.dead else "0",
                            _enc.encode(m.specs.get(tenant, [])),
                            num(m.host.last_heartbeat if now is None else now),
                            num(m.host.last_heartbeat),
                        ],
                    )
                )
                owners.append(m)
        ended: list[tuple[float, int, Session]] = []
        for m, res in zip(owners, await self._batch(calls), strict=True):
            place = {sid: i for i, sid in reversed(list(enumerate(m.host.slot_ids)))}
            for raw in res:
                s = _session.decode(raw)
                ended.append((m.order, place.get(s.slot_id, len(place)), s))
        ended.sort(key=lambda e: (e[0], e[1]))
        sessions = [s for _, _, s in ended]
        clean: list[str] = []
        for m in metas:
            clean += [m.host_id, str(m.ver)]
        await self._batch(
            [*self._forget_sessions(sessions), (sc.mark_clean, [g.dirty, *(g.host(m.host_id) for m in metas)], clean)]
        )
        return sessions

    def _beats(
        self,
        host_id: str,
        tenants: Sequence[str],
        tenant_of: dict[str, str],
        inc: str,
        now: float,
        hb: Heartbeat | None,
    ) -> list[Call]:
        """The tenant part of a heartbeat: one script per tenant of the host, each with that
        tenant's slot reports (none is fine): every tenant's copy of the host must learn
        the new heartbeat deadline, which allocation checks. Without ``hb`` (a repeated
        registration) no report, and the heartbeat sequence starts again."""
        reports: dict[str, list[tuple[int, str, str, float, float, str | None]]] = {t: [] for t in tenants}
        for pos, r in enumerate(hb.slots if hb is not None else ()):
            sid = slot_id(host_id, r.index)
            tenant = tenant_of.get(sid)
            if tenant is not None:
                reports[tenant].append((pos, sid, r.state.value, float(r.nvenc_load), float(r.gpu_load), r.reset_for))
        seq, full = (hb.seq, hb.full) if hb is not None else (0, True)
        gpus = _enc.encode([(g.index, float(g.nvenc_load), float(g.gpu_load)) for g in hb.gpus] if hb else [])
        return [
            (
                self._scripts.heartbeat_slots,
                self._keys(tenant).host_block(host_id),
                [host_id, inc, num(now), _enc.encode(rs), seq, "1" if full else "0", gpus],
            )
            for tenant, rs in reports.items()
        ]

    @guarded
    async def register_host(self, reg: HostRegistration, now: float, *, heartbeat_ttl_s: float | None = None) -> Host:
        ids = [slot_id(reg.host_id, s.index) for s in reg.slots]
        host = Host(
            host_id=reg.host_id,
            boot_id=reg.boot_id,
            region=reg.region,
            az=reg.az,
            gpu_model=reg.gpu_model,
            signaling_url=reg.signaling_url,
            last_heartbeat=now,
            slot_ids=ids,
        )
        by_index = {s.index: s for s in reg.slots}  # a repeated index: the last spec wins
        specs: dict[str, list[Slot]] = {}
        tmap: dict[str, list[str]] = {}
        for index, spec in by_index.items():
            sid = slot_id(reg.host_id, index)
            specs.setdefault(spec.tenant, []).append(registered_slot(reg, spec))
            tmap.setdefault(spec.tenant, []).append(sid)
        g = self._g
        res = await self._scripts.register_host(
            [g.host(reg.host_id), g.hosts, g.hb, g.dirty, g.tenants, g.hseq, g.dead],
            [
                reg.host_id,
                reg.boot_id,
                num(now),
                _enc.encode(host),
                _enc.encode(tmap),
                _enc.encode(specs),
                _enc.encode(list(specs)),
                "" if heartbeat_ttl_s is None else num(heartbeat_ttl_s),
            ],
        )
        status = text(res[0])
        if status == "conflict":
            raise HostConflict(f"host {reg.host_id} is registered and alive under another boot id")
        if int(res[2]):
            await self._to_outbox(await self._propagate([reg.host_id], now))
        if status == "same":  # moves the tenants' deadlines, as a heartbeat does
            tmap = _strmap.decode(res[3])
            tenant_of = {sid: tenant for tenant, sids in tmap.items() for sid in sids}
            await self._batch(self._beats(reg.host_id, list(tmap), tenant_of, text(res[4]), now, None))
        return _host.decode(res[1])

    @guarded
    async def heartbeat(
        self, host_id: str, hb: Heartbeat, now: float, *, heartbeat_ttl_s: float | None = None
    ) -> tuple[list[Session], HeartbeatReply]:
        g, sc = self._g, self._scripts
        known = self._slot_map(host_id)
        keys = [g.host(host_id), g.hb, g.dirty, g.dead, g.hosts]
        ttl = "" if heartbeat_ttl_s is None else num(heartbeat_ttl_s)
        args = [host_id, hb.boot_id, num(now), num(hb.nvenc_load), num(hb.gpu_load), ttl, known.mark if known else ""]
        res = await self._one((sc.heartbeat_host, keys, args))
        status = text(res[0])
        if status == "expired":  # its sessions end now; the next sweep returns them
            await self._to_outbox(await self._propagate([host_id], now))
            raise UnknownHost(f"host {host_id} missed its heartbeat deadline and is dead: register again")
        if status == "unknown":
            raise UnknownHost(f"host {host_id} is not registered")
        if status == "conflict":
            raise HostConflict(f"host {host_id} is registered under another boot id")
        draining, inc = bool(int(res[1])), text(res[2])
        mark = text(res[6])
        if known is None or known.mark != mark:
            known = _SlotMap.of(mark, _strmap.decode(res[4]), _host.decode(res[5]))
            self._keep_slot_map(host_id, known)
        ended: list[tuple[int, Session]] = []
        if int(res[3]):
            ended += [(-1, s) for s in await self._propagate([host_id], now)]
        calls = self._beats(host_id, known.tenants, known.tenant_of, inc, now, hb)
        resets: dict[str, str] = {}
        busy: list[int] = []  # positions in hb.slots
        applied = True
        for out in await self._batch(calls):
            if not int(out[0]):
                applied = False  # the host died or came back meanwhile: this report came before that
                continue
            flat = out[1]
            ended += [(int(flat[i]), _session.decode(flat[i + 1])) for i in range(0, len(flat), 2)]
            flat = out[2]
            resets.update((text(flat[i]), text(flat[i + 1])) for i in range(0, len(flat), 2))
            applied = applied and bool(int(out[3]))
            busy += [int(p) for p in out[4]]
        ended.sort(key=lambda e: e[0])
        sessions = [s for _, s in ended]
        if sessions:
            await self._batch(self._forget_sessions(sessions))
        last = len(known.place)
        reply = HeartbeatReply(
            reset=[
                SlotReset(index=int(sid.rsplit("/", 1)[1]), session_id=resets[sid])
                for sid in sorted(resets, key=lambda sid: known.place.get(sid, last))
            ],
            draining=draining,
        )
        if hb.seq > 0 and not applied:
            reply.snapshot = True
        if busy:
            reply.busy = [hb.slots[p].index for p in sorted(busy)]
        return sessions, reply

    @guarded
    async def set_draining(self, host_id: str, draining: bool) -> Host:
        res = await self._scripts.set_draining(
            [self._g.host(host_id), self._g.dirty], [host_id, "1" if draining else "0"]
        )
        if text(res[0]) == "unknown":
            raise UnknownHost(f"host {host_id} is not registered")
        await self._to_outbox(await self._propagate([host_id], None))
        return _host.decode(res[1])

    @guarded
    async def expire_hosts(self, now: float, ttl_s: float) -> list[Session]:
        g = self._g
        candidates = names(await self._r.zrangebyscore(g.hb, "-inf", num(now - ttl_s + _HB_SLACK_S)))
        dirty, outbox = await self._scripts.expire_hosts(
            [g.hb, g.dirty, g.outbox, g.dead, *map(g.host, candidates)], [num(now), num(ttl_s), *candidates]
        )
        ended = [_session.decode(raw) for raw in outbox]
        return ended + await self._propagate([text(h) for h in dirty], now)

    @guarded
    async def forget_hosts(self, now: float, retention_s: float) -> list[str]:
        g = self._g
        candidates = names(await self._r.zrangebyscore(g.dead, "-inf", _bound(now, retention_s), start=0, num=100))
        if not candidates:
            return []
        ids = [
            text(h)
            for h in await self._scripts.forget_hosts(
                [g.dead, g.dirty, *map(g.host, candidates)], [num(now), num(retention_s), *candidates]
            )
        ]
        if not ids:
            return []
        await self._to_outbox(await self._propagate(ids, now))
        dropped = await self._scripts.drop_hosts([g.dead, g.dirty, g.hosts, *map(g.host, ids)], ids)
        return sorted(text(h) for h in dropped)

    @guarded
    async def hosts(self) -> list[Host]:
        ids = names(await self._r.zrange(self._g.hosts, 0, -1))
        recs = await self._batch([cmd("HGET", self._g.host(h), "rec") for h in ids])
        return [_host.decode(r) for r in recs if r is not None]
