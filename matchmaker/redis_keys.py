"""Every Redis key name the matchmaker uses, built in one place (layout: docs/matchmaker-store.md).

Scripts receive these names in ``KEYS``; the one name a script builds itself (a slot's
placement index, ``matchmaker/lua/tenant.lua`` ``idx()``) follows ``TenantKeys.index``.
"""

from __future__ import annotations

from typing import cast

import msgspec

from matchmaker.models import SESSION_FROM_SLOT, AllocationRequest, Session


def escape(part: str) -> str:
    """Braces and ``%`` escaped, so a tenant can neither close a hash tag nor collide."""
    if "%" in part or "{" in part or "}" in part:
        return part.replace("%", "%25").replace("{", "%7B").replace("}", "%7D")
    return part


class HostKeys:
    """The host registry's keys: one hash tag, ``{P}``."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        g = self.tag = "{" + prefix + "}"
        self.hosts, self.hseq, self.hb, self.dirty = f"{g}:hosts", f"{g}:hseq", f"{g}:hb", f"{g}:dirty"
        self.dead, self.tenants, self.outbox = f"{g}:dead", f"{g}:tenants", f"{g}:outbox"

    def host(self, host_id: str) -> str:
        return f"{self.tag}:host:{host_id}"

    def session_tenant(self, session_id: str) -> str:
        """``P:sid:<id>``: the tenant of a live session (no hash tag: looked up alone)."""
        return f"{self.prefix}:sid:{session_id}"

    def ticket_tenant(self, ticket_id: str) -> str:
        """``P:tid:<id>``: the tenant and app of a ticket."""
        return f"{self.prefix}:tid:{ticket_id}"


class TenantKeys:
    """One tenant's keys: one hash tag, ``{P:T}``."""

    def __init__(self, prefix: str, tenant: str) -> None:
        t = self.tag = "{" + prefix + ":" + escape(tenant) + "}"
        self.slots, self.hosts, self.apps, self.live = f"{t}:slots", f"{t}:hosts", f"{t}:apps", f"{t}:live"
        self.gpu, self.sessions, self.clients = f"{t}:gpu", f"{t}:sessions", f"{t}:clients"
        self.rec, self.recq, self.created = f"{t}:rec", f"{t}:recq", f"{t}:created"
        self.qseq, self.queues = f"{t}:qseq", f"{t}:queues"
        self.since = {state: f"{t}:since:{state}" for state in ("assigned", "connected", "disconnected")}
        self.beat = f"{t}:beat"
        self.hbseq = f"{t}:hbseq"
        # KEYS[1..14] of the scripts that change slots and sessions (tenant.lua tenant_keys).
        self.block = (
            self.slots,
            self.hosts,
            self.apps,
            self.live,
            self.gpu,
            self.sessions,
            self.clients,
            self.rec,
            self.recq,
            self.created,
            *self.since.values(),
            self.beat,
        )
        self.session_index = (self.sessions, self.created, *self.since.values())
        self._allocate: dict[tuple[str, str], tuple[bytes, ...]] = {}

    def resets(self, host_id: str) -> str:
        """A host's resetting slots (slot id -> ended session; tenant.lua ``resets_key``)."""
        return f"{self.tag}:rs:{host_id}"

    def gpu_loads(self, host_id: str) -> str:
        """A host's GPU loads (GPU index -> 'nvenc,gpu'; tenant.lua ``gpu_loads_key``)."""
        return f"{self.tag}:gl:{host_id}"

    def gpu_slots(self, host_id: str) -> str:
        """A host's slots of this tenant by GPU (GPU index -> {app: [slot id]}; 'r': region)."""
        return f"{self.tag}:gs:{host_id}"

    def host_block(self, host_id: str) -> tuple[str, ...]:
        """KEYS[1..18] of heartbeat_slots.lua and apply_host.lua: the block, then the
        heartbeat sequence hash, the host's resetting slots, its GPU loads and its slots
        by GPU."""
        return (*self.block, self.hbseq, self.resets(host_id), self.gpu_loads(host_id), self.gpu_slots(host_id))

    def ticket(self, ticket_id: str) -> str:
        return f"{self.tag}:ticket:{ticket_id}"

    def ended(self, session_id: str) -> str:
        """An ended session's reason, kept ``store.ENDED_REASON_TTL_S`` (set by tenant.lua end_sess)."""
        return f"{self.sessions}:ended:{session_id}"

    def queue(self, app: str) -> str:
        return f"{self.tag}:queue:{app}"

    def qclients(self, app: str) -> str:
        return f"{self.tag}:qclients:{app}"

    def index(self, kind: str, app: str, region: str | None = None) -> str:
        """A placement index (kind ``rz``: slot -> load; ``fh``: host -> claimable slots);
        the region is length-prefixed so that no (region, app) pair names another's key."""
        if region is None:
            return f"{self.tag}:{kind}:{app}"
        return f"{self.tag}:{kind}@{len(region)}:{region}:{app}"

    def allocate(self, app: str, region: str) -> tuple[bytes, ...]:
        """KEYS[1..16] of allocate.lua (cached, and as bytes: the hot path sends them on
        every call, and redis-py would encode each str again)."""
        keys = self._allocate.get((app, region))
        if keys is None:
            if len(self._allocate) > 10_000:
                self._allocate.clear()
            rz, fh = self.index("rz", app), self.index("fh", app)
            regional = (self.index("rz", app, region), self.index("fh", app, region)) if region else (rz, fh)
            names = (
                self.slots,
                self.hosts,
                self.apps,
                self.gpu,
                self.sessions,
                self.clients,
                self.created,
                self.since["assigned"],
                self.queues,
                self.queue(app),
                self.qclients(app),
                rz,
                fh,
                *regional,
                self.beat,
            )
            keys = self._allocate[(app, region)] = tuple(k.encode() for k in names)
        return keys


_enc = msgspec.json.Encoder()
_MARK = "\x00slot\x00"


def session_template(request: AllocationRequest, session_id: str, now: float) -> bytes:
    """A new session's JSON (msgspec, from ``models.Session``) in pieces around the
    fields it takes from the slot, for allocate.lua to fill: piece, field, piece, ...
    The model is the one definition of the record; Lua only inserts the slot's values."""
    raw = _enc.encode(
        Session(
            session_id=session_id,
            tenant=request.tenant,
            app=request.app,
            client_key=request.client_key,
            subject=request.subject,
            trace=request.trace,
            created_at=now,
            last_activity=now,
            slot_id=_MARK,
            host_id=_MARK,
            streamer_id=_MARK,
            signaling_url=_MARK,
            region=_MARK,
            gpu_share=cast("float", _MARK),  # a placeholder like the others: Lua fills the slot's
        )
    )
    pieces = raw.split(_enc.encode(_MARK))
    out = [pieces[0]]
    for field, piece in zip(_FIELD_ORDER, pieces[1:], strict=True):
        out += [field, piece]
    return b"\0".join(out)  # JSON escapes NUL inside strings: a raw one only separates


_FIELD_ORDER = tuple(f.encode() for f in Session.__struct_fields__ if f in SESSION_FROM_SLOT)
