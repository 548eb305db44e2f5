"""Redis store: any number of matchmaker replicas over one Redis or Redis Cluster.

Same semantics as ``MemoryStore`` (the conformance suite and the stateful test check
both). Every state transition is one server-side Lua script (``register_script``,
EVALSHA), so it is atomic on the server whatever the number of replicas.

URL: ``redis://``, ``rediss://`` or ``unix://`` as redis-py reads them. Add the query
parameter ``cluster=1`` (``redis://node:7000/?cluster=1``) to use
``redis.asyncio.cluster.RedisCluster``; any node of the cluster will do as the seed.
Without it the client uses a blocking pool of ``max_connections`` (URL parameter,
default 256): a request waits for a free connection rather than failing.

Key layout (``P`` is the prefix, ``T`` a tenant; the part in braces is the hash tag)::

    {P}:hosts            ZSET  host id -> registration order (the host listing)
    {P}:hseq             STR   counter for that order
    {P}:hb               ZSET  live host id -> last heartbeat (the expiry scan)
    {P}:host:<host>      HASH  rec: Host JSON; ver: change counter; inc: ver at which
                               this incarnation registered; tmap: {tenant: [slot ids]};
                               specs: {tenant: [Slot JSON]}; old: tenants still holding
                               an older incarnation's slots
    {P}:dirty            SET   hosts whose tenant copies may lag their record
    {P}:dead             ZSET  dead host id -> its last heartbeat (``forget_hosts``)
    {P}:tenants          SET   every tenant seen (listings iterate it; never KEYS)
    {P}:outbox           LIST  ended sessions no caller could return (see below)
    {P:T}:slots          HASH  slot id -> Slot JSON
    {P:T}:hosts          HASH  host id -> the tenant's copy of the host's state:
                               {v: ver, i: inc, d: draining, x: dead, s: [slot ids]}
    {P:T}:apps           HASH  app -> number of registered slots (``serves``)
    {P:T}:live           HASH  app -> its slots on live hosts (``slot_count``, ETAs)
    {P:T}:ready:<app>    HASH  slot id -> Slot JSON of the claimable slots (READY on a
                               live, non-draining host); ``ready_slots`` is one HVALS
    {P:T}:rz:<app>       ZSET  claimable slot id -> load in whole percent (placement)
    {P:T}:rz@<n>:<region>:<app>   the same, one region (n: the region's length)
    {P:T}:fh:<app>       ZSET  host id -> its claimable slots of the app (ties, pack)
    {P:T}:fh@<n>:<region>:<app>   the same, one region
    {P:T}:gpu            HASH  host id -> GPU model (the request's GPU filter)
    {P:T}:sessions       HASH  session id -> Session JSON (ended ones are deleted)
    {P:T}:clients        HASH  client key -> session id
    {P:T}:rec            HASH  session id -> ended Session JSON, until its record is written
    {P:T}:recq           ZSET  session id -> when its record is due (end, or lease end)
    {P:T}:created        ZSET  live session id -> created_at (``due_sessions``)
    {P:T}:since:<state>  ZSET  live session id of that state (assigned, connected,
                               disconnected) -> when its timeout started: last_activity,
                               or disconnected_at; a live session is in exactly one
    {P:T}:ticket:<id>    STR   Ticket JSON; expires 1 h after it leaves WAITING
    {P:T}:queue:<app>    ZSET  waiting ticket id -> arrival number (FIFO, ZRANK = place)
    {P:T}:qseq           STR   arrival counter
    {P:T}:queues         SET   apps whose queue is not empty
    {P:T}:qclients:<app> HASH  client key -> its waiting ticket id (a reload rejoins it);
                               the entry goes when that ticket leaves WAITING
    P:sid:<session>      STR   tenant of a live session (deleted when it ends)
    P:tid:<ticket>       STR   tenant of a ticket (expires with the ticket)

The tenant is escaped in the tag (``%``, ``{``, ``}``), so the layout is injective.
Records are JSON. Lua re-encodes a record it changes with its own encoder (numbers as
``%.17g``), because ``cjson.encode`` keeps only 14 digits and would corrupt timestamps
and loads; msgspec decodes the result exactly.

Cluster safety. Every script touches keys of exactly one hash slot: ``{P}`` for host
records, ``{P:T}`` for one tenant. ``allocate`` (the hot path), ``end_session``,
the session transitions and the queue operations are each one script in the tenant's
slot; ``ready_slots`` is one HVALS there. Some scripts name per-app keys
(``{P:T}:ready:<app>``, ``{P:T}:queue:<app>``) that they derive inside the script; those
share the declared key's hash tag, which Redis Cluster allows (Redis >= 7 checks that
undeclared keys hash to the same slot); the allocation script derives the placement
indexes and the ticket key so.

Allocation is one script (``_ALLOCATE``): the client's live session, the queue head, the
placement and the compare-and-set, in one round trip. Placement reads the score indexes
(``rz``, ``fh``), which ``sync_ready``/``unready`` keep equal to the ready hash in every
script that changes a slot, so it costs O(log n + window), never a decode of the pool.

Sweeps read deadline indexes that every script touching a session keeps (derived from
its tag): ``due_sessions`` is one script per tenant, pipelined, reading those indexes up
to each deadline and returning only the due sessions, so a sweep costs what is due, not
what is live. A tenant whose indexes lack sessions (written before the indexes existed)
has them rebuilt by its next ``due_sessions``.

The ``P:sid`` / ``P:tid`` lookups exist because ``session(id)``, ``end_session(id)``,
``ticket(id)`` ... carry no tenant. A lookup is immutable, so each replica caches it.
An allocation writes it in the same pipeline as the allocation script (one round trip)
and deletes it again when nothing was claimed.

Host operations touch the host record and the slots of each tenant the host serves, so
on a cluster they are several scripts, in this order:

1. one script on ``{P}`` checks and updates the host record (UnknownHost,
   HostConflict, the new boot, draining, death), bumps ``ver`` when the tenants must
   follow, and adds the host to ``{P}:dirty``;
2. one script per tenant (pipelined) applies that version of the host to the tenant's
   copy and slots: create the incarnation's slots, drop an older incarnation's, mark
   them dead and end their sessions, add or remove them from the ready hashes. Applying
   is idempotent and monotone (a copy never goes back to a lower ``ver``), so any
   replica may repeat it at any time, in any order with another replica's;
3. one script on ``{P}`` removes the host from ``{P}:dirty`` if ``ver`` did not move.

Why this is still safe: claims only ever read the tenant's copy, in the same script as
the slot, so a slot is never given twice. A claim that runs between steps 1 and 2 is
ordered before the host change: the drain lets it finish like any current session; the
death ends it in step 2 (HOST_DEAD), exactly as if it had come just before the expiry.
``set_draining`` returns only after step 2, so no claim succeeds after it. A heartbeat
applies its slot reports (step 2) only while the tenant's copy is of the same,
live incarnation; one that lost a race with the host's death or re-registration
changes nothing there, as if it had come just before. If a replica dies between the
steps, the host stays in ``{P}:dirty``: the next ``expire_hosts`` (every replica sweeps)
or heartbeat of that host applies it. Sessions ended while applying a re-registration
(only possible after such a crash) cannot be returned by ``register_host`` or
``set_draining``; they go to ``{P}:outbox`` and the next ``expire_hosts`` returns them,
so every end is still recorded once. A death is applied only with the sweep's clock
(``set_draining`` leaves a host that died meanwhile to the sweep).

Other multi-command operations: ``enqueue`` writes ``{P}:tenants`` and the ticket
lookup before the enqueue script (and deletes the lookup again when the queue is full
or the client's own waiting ticket came back instead); a guarded ``finish_ticket``
starts the lookup's expiry only once its script has finished the ticket; ``end_session``
and the operations that end sessions delete the session lookups afterwards (a lookup
left by a crash points to a session that no longer exists, which reads as "no such
session", as it should).

Differences from ``MemoryStore`` a caller can see: finished tickets expire after
``FINISHED_TICKET_TTL_S`` (memory keeps the last 10,000); listings and ``ready_slots``
come in no particular order (hosts in registration order); a timeout during
``allocate`` raises BackendUnavailable although the claim may have happened (the
session then never connects and the sweep ends it, NEVER_CONNECTED).

redis-py's connection and timeout errors become ``BackendUnavailable`` here and
nowhere else; every operation runs under ``asyncio.timeout``.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from typing import Any, Concatenate, ParamSpec, TypeVar

import msgspec
from redis import exceptions as rx
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster

from matchmaker.models import (
    AllocationRequest,
    EndReason,
    Heartbeat,
    HeartbeatReply,
    Host,
    HostRegistration,
    Session,
    Slot,
    SlotReset,
    Ticket,
    TicketState,
    slot_id,
)
from matchmaker.store import BackendUnavailable, HostConflict, NoClaim, QueueFull, Returning, UnknownHost

FINISHED_TICKET_TTL_S = 3600
DEFAULT_TIMEOUT_S = 5.0
DEFAULT_MAX_CONNECTIONS = 256
_CACHE_MAX = 100_000
_HB_SLACK_S = 1.0

_UNAVAILABLE: tuple[type[BaseException], ...] = (
    rx.ConnectionError, rx.TimeoutError, rx.ClusterDownError, rx.TryAgainError,
    rx.MasterDownError, rx.ReadOnlyError, rx.ClusterError)

_enc = msgspec.json.Encoder()
_host = msgspec.json.Decoder(Host)
_hosts = msgspec.json.Decoder(list[Host])
_slots = msgspec.json.Decoder(list[Slot])
_session = msgspec.json.Decoder(Session)
_sessions = msgspec.json.Decoder(list[Session])
_ticket = msgspec.json.Decoder(Ticket)
_tickets = msgspec.json.Decoder(list[Ticket])
_strmap = msgspec.json.Decoder(dict[str, list[str]])
_NO_CLAIM = {"queued": NoClaim.QUEUE_AHEAD, "none": NoClaim.NO_SLOT, "unknown": NoClaim.UNKNOWN_APP,
             "refused": NoClaim.REFUSED}


# --- Lua ------------------------------------------------------------------------------

# Shared helpers. enc() is a JSON encoder that keeps every double exact (%.17g);
# cjson.encode is used only for strings. cjson.decode is exact (strtod).
_PRELUDE = r"""
local NULL = cjson.null
local function enc(v)
  local t = type(v)
  if t == 'string' then return cjson.encode(v) end
  if t == 'number' then
    if v ~= v or v == math.huge or v == -math.huge then return 'null' end
    return string.format('%.17g', v)
  end
  if t == 'boolean' then return v and 'true' or 'false' end
  if t == 'table' then
    local parts = {}
    if v[1] ~= nil or next(v) == nil then
      for i = 1, #v do parts[i] = enc(v[i]) end
      return '[' .. table.concat(parts, ',') .. ']'
    end
    for k, x in pairs(v) do parts[#parts + 1] = cjson.encode(k) .. ':' .. enc(x) end
    return '{' .. table.concat(parts, ',') .. '}'
  end
  return 'null'
end
local function truthy(s) return s ~= nil and s ~= NULL and s ~= false and s ~= '' end
-- '{P:T}' of a tenant key (the tenant is escaped: no braces inside).
local function tag_of(key) return string.match(key, '^{[^}]*}') end
-- The deadline indexes (due_sessions): a live session is in {P:T}:created (created_at)
-- and in the since:<state> set of its state (what that state's timeout counts from).
-- Every script that creates, changes or ends a session calls these. Scores are exact:
-- enc() writes %.17g (tostring would keep 14 digits).
local SINCE = {assigned = 'last_activity', connected = 'last_activity', disconnected = 'disconnected_at'}
local function index_session(tag, s, was)  -- was: the state before the change; nil for new
  local sid = s.session_id
  if was == nil then
    redis.call('ZADD', tag .. ':created', enc(s.created_at), sid)
  elseif was ~= s.state and SINCE[was] then
    redis.call('ZREM', tag .. ':since:' .. was, sid)
  end
  local at = SINCE[s.state] and s[SINCE[s.state]]
  if type(at) == 'number' then redis.call('ZADD', tag .. ':since:' .. s.state, enc(at), sid) end
end
local function unindex_session(tag, s)
  if SINCE[s.state] then redis.call('ZREM', tag .. ':since:' .. s.state, s.session_id) end
  redis.call('ZREM', tag .. ':created', s.session_id)
end
"""

# Tenant-scoped helpers: tag is '{P:T}'.
_TENANT = _PRELUDE + r"""
-- The placement indexes of one app's claimable slots (region nil: all regions; the
-- region is length-prefixed so that no (region, app) pair names another's key).
local function idx(tag, kind, app, region)
  if region == nil then return tag .. ':' .. kind .. ':' .. app end
  return tag .. ':' .. kind .. '@' .. #region .. ':' .. region .. ':' .. app
end
-- A slot's load as placement compares it: whole percent of the higher of NVENC and GPU.
local function load_pct(slot)
  local l = math.max(tonumber(slot.nvenc_load) or 0, tonumber(slot.gpu_load) or 0)
  return math.floor(l * 100 + 0.5)
end
local function index_ready(tag, slot)
  local pct = load_pct(slot)
  local added = redis.call('ZADD', idx(tag, 'rz', slot.app), pct, slot.slot_id)
  redis.call('ZADD', idx(tag, 'rz', slot.app, slot.region), pct, slot.slot_id)
  if added == 1 then
    redis.call('ZINCRBY', idx(tag, 'fh', slot.app), 1, slot.host_id)
    redis.call('ZINCRBY', idx(tag, 'fh', slot.app, slot.region), 1, slot.host_id)
    redis.call('HSET', tag .. ':gpu', slot.host_id, slot.gpu_model)
  end
end
-- The slot leaves the ready hash and the indexes (whatever it was before).
local function unready(tag, slot)
  redis.call('HDEL', tag .. ':ready:' .. slot.app, slot.slot_id)
  if redis.call('ZREM', idx(tag, 'rz', slot.app), slot.slot_id) == 1 then
    redis.call('ZREM', idx(tag, 'rz', slot.app, slot.region), slot.slot_id)
    for _, k in ipairs({idx(tag, 'fh', slot.app), idx(tag, 'fh', slot.app, slot.region)}) do
      if tonumber(redis.call('ZINCRBY', k, -1, slot.host_id)) <= 0 then redis.call('ZREM', k, slot.host_id) end
    end
  end
end
-- Every script that writes a slot calls this: the ready hash holds the current JSON of
-- exactly the claimable slots, and the indexes exactly those slots.
local function sync_ready(tag, slot, json, hc)
  if slot.state == 'ready' and hc and not hc.d and not hc.x then
    redis.call('HSET', tag .. ':ready:' .. slot.app, slot.slot_id, json)
    index_ready(tag, slot)
  else
    unready(tag, slot)
  end
end
-- End a live session once: delete it, drop its client index, slot ASSIGNED -> RESETTING.
local function end_sess(tag, sid, reason, now)
  local K_sess = tag .. ':sessions'
  local raw = redis.call('HGET', K_sess, sid)
  if not raw then return nil end
  local s = cjson.decode(raw)
  if s.state == 'ended' then return nil end
  unindex_session(tag, s)
  s.state = 'ended'; s.ended_at = now; s.end_reason = reason
  redis.call('HDEL', K_sess, sid)
  if truthy(s.client_key) then
    local K_cli = tag .. ':clients'
    if redis.call('HGET', K_cli, s.client_key) == sid then redis.call('HDEL', K_cli, s.client_key) end
  end
  local K_slots = tag .. ':slots'
  local sr = redis.call('HGET', K_slots, s.slot_id)
  if sr then
    local slot = cjson.decode(sr)
    if slot.session_id == sid then
      slot.session_id = NULL
      if slot.state == 'assigned' then slot.state = 'resetting'; slot.ended_session = sid end
      redis.call('HSET', K_slots, s.slot_id, enc(slot))
      unready(tag, slot)
    end
  end
  local out = enc(s)
  -- The record waits here until a replica has written it to the sink (take/ack_records).
  redis.call('HSET', tag .. ':rec', sid, out)
  redis.call('ZADD', tag .. ':recq', now, sid)
  return out
end
"""

# {P}: register a host. KEYS: host, hosts, hb, dirty, tenants, hseq, dead.
# ARGV: host id, boot, now, Host JSON, tmap JSON, specs JSON, tenants JSON.
_REGISTER = _PRELUDE + r"""
local cur = redis.call('HGET', KEYS[1], 'rec')
local old, seen = {}, {}
if cur then
  local h = cjson.decode(cur)
  if not h.dead then
    if h.boot_id ~= ARGV[2] then return {'conflict'} end
    h.last_heartbeat = tonumber(ARGV[3])
    local rec = enc(h)
    redis.call('HSET', KEYS[1], 'rec', rec)
    redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
    return {'same', rec, redis.call('SISMEMBER', KEYS[4], ARGV[1])}
  end
  -- A dead host comes back: the tenants of its old slots must drop them.
  local prev = redis.call('HGET', KEYS[1], 'old')
  if prev then
    for _, t in ipairs(cjson.decode(prev)) do
      if not seen[t] then seen[t] = true; old[#old + 1] = t end
    end
  end
  local tm = redis.call('HGET', KEYS[1], 'tmap')
  if tm then
    for t, _ in pairs(cjson.decode(tm)) do
      if not seen[t] then seen[t] = true; old[#old + 1] = t end
    end
  end
end
local ver = redis.call('HINCRBY', KEYS[1], 'ver', 1)
redis.call('HSET', KEYS[1], 'rec', ARGV[4], 'tmap', ARGV[5], 'specs', ARGV[6], 'inc', ver)
redis.call('HDEL', KEYS[1], 'gone')
redis.call('ZREM', KEYS[7], ARGV[1])
if #old > 0 then redis.call('HSET', KEYS[1], 'old', cjson.encode(old)) end
if not redis.call('ZSCORE', KEYS[2], ARGV[1]) then
  redis.call('ZADD', KEYS[2], redis.call('INCR', KEYS[6]), ARGV[1])
end
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
redis.call('SADD', KEYS[4], ARGV[1])
for _, t in ipairs(cjson.decode(ARGV[7])) do redis.call('SADD', KEYS[5], t) end
return {'new', ARGV[4], 1}
"""

# {P}: the host part of a heartbeat. KEYS: host, hb, dirty.
# ARGV: host id, boot, now, nvenc load, gpu load.
_HB_HOST = _PRELUDE + r"""
local cur = redis.call('HGET', KEYS[1], 'rec')
if not cur then return {'unknown'} end
local h = cjson.decode(cur)
if h.dead then return {'unknown'} end
if h.boot_id ~= ARGV[2] then return {'conflict'} end
h.last_heartbeat = tonumber(ARGV[3]); h.nvenc_load = tonumber(ARGV[4]); h.gpu_load = tonumber(ARGV[5])
local rec = enc(h)
redis.call('HSET', KEYS[1], 'rec', rec)
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
local m = redis.call('HMGET', KEYS[1], 'tmap', 'inc')
return {'ok', rec, m[1] or '{}', m[2] or '0', redis.call('SISMEMBER', KEYS[3], ARGV[1])}
"""

# {P}: drain or undrain a live host. KEYS: host, dirty. ARGV: host id, '1' | '0'.
_DRAIN = _PRELUDE + r"""
local cur = redis.call('HGET', KEYS[1], 'rec')
if not cur then return {'unknown'} end
local h = cjson.decode(cur)
if h.dead then return {'unknown'} end
h.draining = ARGV[2] == '1'
local rec = enc(h)
redis.call('HSET', KEYS[1], 'rec', rec)
redis.call('HINCRBY', KEYS[1], 'ver', 1)
redis.call('SADD', KEYS[2], ARGV[1])
return {'ok', rec}
"""

# {P}: mark silent hosts dead; return every dirty host and the outbox.
# KEYS: hb, dirty, outbox, dead. ARGV: '{P}', now, ttl, upper bound of candidate scores.
_EXPIRE = _PRELUDE + r"""
local now, ttl = tonumber(ARGV[2]), tonumber(ARGV[3])
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[4])) do
  local hk = ARGV[1] .. ':host:' .. id
  local cur = redis.call('HGET', hk, 'rec')
  if not cur then
    redis.call('ZREM', KEYS[1], id)
  else
    local h = cjson.decode(cur)
    if h.dead then
      redis.call('ZREM', KEYS[1], id)
    elseif now - h.last_heartbeat > ttl then
      h.dead = true
      redis.call('HSET', hk, 'rec', enc(h))
      redis.call('HINCRBY', hk, 'ver', 1)
      redis.call('ZREM', KEYS[1], id)
      redis.call('SADD', KEYS[2], id)
      redis.call('ZADD', KEYS[4], enc(h.last_heartbeat), id)
    end
  end
end
local out = redis.call('LRANGE', KEYS[3], 0, -1)
redis.call('DEL', KEYS[3])
return {redis.call('SMEMBERS', KEYS[2]), out}
"""

# {P}: hosts dead for longer than the retention (now - last heartbeat > retention, in
# doubles as Python computes it) start to be forgotten: each becomes an empty incarnation
# ('gone'), so the tenants drop its slots when it is applied. KEYS: dead, dirty.
# ARGV: '{P}', now, retention. A host that came back meanwhile only leaves the index.
_FORGET = r"""
local now, keep = tonumber(ARGV[2]), tonumber(ARGV[3])
local bound = string.format('%.17g', now - keep + (math.abs(now) + math.abs(keep)) * 1e-14)
local out = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', bound, 'LIMIT', 0, 100)) do
  local hk = ARGV[1] .. ':host:' .. id
  local cur = redis.call('HGET', hk, 'rec')
  local h = cur and cjson.decode(cur)
  if not h or not h.dead then
    redis.call('ZREM', KEYS[1], id)
  elseif now - h.last_heartbeat > keep then
    local old, seen = {}, {}
    local prev = redis.call('HGET', hk, 'old')
    for _, t in ipairs(prev and cjson.decode(prev) or {}) do
      if not seen[t] then seen[t] = true; old[#old + 1] = t end
    end
    local tm = redis.call('HGET', hk, 'tmap')
    for t, _ in pairs(tm and cjson.decode(tm) or {}) do
      if not seen[t] then seen[t] = true; old[#old + 1] = t end
    end
    local ver = redis.call('HINCRBY', hk, 'ver', 1)
    redis.call('HSET', hk, 'tmap', '{}', 'specs', '{}', 'inc', ver, 'gone', '1')
    if #old > 0 then redis.call('HSET', hk, 'old', cjson.encode(old)) end
    redis.call('SADD', KEYS[2], id)
    out[#out + 1] = id
  end
end
return out
"""

# {P}: forgotten hosts whose tenants have caught up are deleted. KEYS: dead, dirty,
# hosts. ARGV: '{P}', host ids...
_DROP_HOSTS = r"""
local out = {}
for i = 2, #ARGV do
  local hk = ARGV[1] .. ':host:' .. ARGV[i]
  if redis.call('HGET', hk, 'gone') == '1' and redis.call('SISMEMBER', KEYS[2], ARGV[i]) == 0 then
    redis.call('DEL', hk)
    redis.call('ZREM', KEYS[3], ARGV[i])
    redis.call('ZREM', KEYS[1], ARGV[i])
    out[#out + 1] = ARGV[i]
  end
end
return out
"""

# {P}: what the tenants must apply for these hosts. KEYS: hosts. ARGV: '{P}', host ids...
_META = r"""
local out = {}
for i = 2, #ARGV do
  local m = redis.call('HMGET', ARGV[1] .. ':host:' .. ARGV[i], 'rec', 'ver', 'inc', 'specs', 'old', 'tmap')
  if m[1] then
    out[#out + 1] = {ARGV[i], m[1], m[2] or '0', m[3] or '0', m[4] or '{}', m[5] or '[]', m[6] or '{}',
                     redis.call('ZSCORE', KEYS[1], ARGV[i]) or '0'}
  end
end
return out
"""

# {P}: the tenants caught up with these versions. KEYS: dirty. ARGV: '{P}', (host, ver)...
_CLEAN = r"""
for i = 2, #ARGV, 2 do
  local hk = ARGV[1] .. ':host:' .. ARGV[i]
  if redis.call('HGET', hk, 'ver') == ARGV[i + 1] then
    redis.call('SREM', KEYS[1], ARGV[i])
    redis.call('HDEL', hk, 'old')
  end
end
return 1
"""

# {P}: every host record, in registration order. KEYS: hosts. ARGV: '{P}'.
_LIST_HOSTS = r"""
local parts = {}
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local rec = redis.call('HGET', ARGV[1] .. ':host:' .. id, 'rec')
  if rec then parts[#parts + 1] = rec end
end
return '[' .. table.concat(parts, ',') .. ']'
"""

# {P:T}: apply a host version to this tenant. KEYS: {P:T}:hosts.
# ARGV: tag, host id, inc, ver, draining, dead, [Slot JSON] of this tenant, now.
_APPLY = _TENANT + r"""
local tag, host = ARGV[1], ARGV[2]
local inc, ver, now = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[8])
local K_slots, K_apps = tag .. ':slots', tag .. ':apps'
local raw = redis.call('HGET', KEYS[1], host)
local hc = raw and cjson.decode(raw)
if hc and hc.v >= ver then return {} end
local ended = {}
-- {P:T}:live counts each app's slots on live hosts (queue ETAs): +1 when a live host's
-- slot is created, -1 when it is dropped or its host dies.
local function live(app, n)
  if redis.call('HINCRBY', tag .. ':live', app, n) <= 0 then redis.call('HDEL', tag .. ':live', app) end
end
local function drop(sid, alive)
  local sr = redis.call('HGET', K_slots, sid)
  if not sr then return end
  local slot = cjson.decode(sr)
  if alive then live(slot.app, -1) end
  if truthy(slot.session_id) then
    local e = end_sess(tag, slot.session_id, 'host_dead', now)
    if e then ended[#ended + 1] = e end
  end
  unready(tag, slot)
  redis.call('HDEL', K_slots, sid)
  if redis.call('HINCRBY', K_apps, slot.app, -1) <= 0 then redis.call('HDEL', K_apps, slot.app) end
end
if hc and hc.i ~= inc then
  for _, sid in ipairs(hc.s) do drop(sid, not hc.x) end
  hc = nil
end
if not hc then
  local specs = cjson.decode(ARGV[7])
  if #specs == 0 then
    redis.call('HDEL', KEYS[1], host)
    redis.call('HDEL', tag .. ':gpu', host)
    return ended
  end
  hc = {v = ver, i = inc, d = false, x = false, s = {}}
  for _, spec in ipairs(specs) do
    drop(spec.slot_id, false)
    redis.call('HSET', K_slots, spec.slot_id, enc(spec))
    redis.call('HINCRBY', K_apps, spec.app, 1)
    live(spec.app, 1)
    hc.s[#hc.s + 1] = spec.slot_id
  end
end
local dead = ARGV[6] == '1'
if dead and not hc.x then
  for _, sid in ipairs(hc.s) do
    local sr = redis.call('HGET', K_slots, sid)
    if sr then
      local slot = cjson.decode(sr)
      live(slot.app, -1)
      if slot.session_id ~= NULL then
        local e = end_sess(tag, slot.session_id, 'host_dead', now)
        if e then ended[#ended + 1] = e end
        slot = cjson.decode(redis.call('HGET', K_slots, sid))
      end
      slot.state = 'dead'
      redis.call('HSET', K_slots, sid, enc(slot))
    end
  end
end
hc.x = hc.x or dead
hc.d = ARGV[5] == '1'
hc.v = ver
for _, sid in ipairs(hc.s) do
  local sr = redis.call('HGET', K_slots, sid)
  if sr then sync_ready(tag, cjson.decode(sr), sr, hc) end
end
redis.call('HSET', KEYS[1], host, enc(hc))
return ended
"""

# {P:T}: lease the records due for the sink. KEYS: recq. ARGV: tag, now, lease end, limit.
# A record is due from its end, and again when a lease runs out unacknowledged (the
# replica that took it died before writing it).
_TAKE_RECORDS = r"""
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[2], 'LIMIT', 0, tonumber(ARGV[4]))
local out = {}
for _, id in ipairs(ids) do
  local rec = redis.call('HGET', ARGV[1] .. ':rec', id)
  if rec then
    redis.call('ZADD', KEYS[1], ARGV[3], id)
    out[#out + 1] = rec
  else
    redis.call('ZREM', KEYS[1], id)
  end
end
return out
"""

# {P:T}: records written to the sink. KEYS: recq. ARGV: tag, session ids...
_ACK_RECORDS = r"""
for i = 2, #ARGV do
  redis.call('ZREM', KEYS[1], ARGV[i])
  redis.call('HDEL', ARGV[1] .. ':rec', ARGV[i])
end
return 1
"""

# {P:T}: the slot part of a heartbeat. KEYS: {P:T}:hosts.
# ARGV: tag, host id, inc, now, [[pos, slot id, state, nvenc, gpu, reset_for], ...].
_HB_SLOTS = _TENANT + r"""
local tag, host = ARGV[1], ARGV[2]
local now = tonumber(ARGV[4])
local K_slots = tag .. ':slots'
local raw = redis.call('HGET', KEYS[1], host)
if not raw then return {0} end
local hc = cjson.decode(raw)
if hc.i ~= tonumber(ARGV[3]) or hc.x then return {0} end
local ended, resets = {}, {}
for _, r in ipairs(cjson.decode(ARGV[5])) do
  local sid, st, rf = r[2], r[3], r[6]
  local sr = redis.call('HGET', K_slots, sid)
  if sr then
    local slot = cjson.decode(sr)
    slot.nvenc_load = r[4]; slot.gpu_load = r[5]
    if slot.state == 'assigned' then
      if (st == 'dead' or st == 'starting') and truthy(slot.session_id) then
        redis.call('HSET', K_slots, sid, enc(slot))
        local e = end_sess(tag, slot.session_id, 'slot_failed', now)
        if e then ended[#ended + 1] = tostring(r[1]); ended[#ended + 1] = e end
        slot = cjson.decode(redis.call('HGET', K_slots, sid))
        slot.state = st; slot.ended_session = NULL
      end
    elseif slot.state == 'resetting' then
      if st == 'ready' and rf == slot.ended_session then
        slot.state = 'ready'; slot.ended_session = NULL
      elseif st == 'dead' then
        slot.state = 'dead'; slot.ended_session = NULL
      end
    elseif st == 'ready' or st == 'starting' or st == 'dead' then
      slot.state = st
    end
    local json = enc(slot)
    redis.call('HSET', K_slots, sid, json)
    sync_ready(tag, slot, json, hc)
  end
end
for _, sid in ipairs(hc.s) do
  local sr = redis.call('HGET', K_slots, sid)
  if sr then
    local slot = cjson.decode(sr)
    if slot.state == 'resetting' and truthy(slot.ended_session) then
      resets[#resets + 1] = sid; resets[#resets + 1] = slot.ended_session
    end
  end
end
return {1, ended, resets}
"""

# {P:T}: allocation, one round trip: FIFO check, placement, and the compare-and-set.
# KEYS: slots (the tenant's other keys share its tag and are derived from it: few
# arguments, because packing them is most of what a replica spends sending this).
# ARGV: 1 session id, 2 app, 3 client key, 4 region, 5 GPU model, 6 policy, 7 random
# number in [0, 1), 8 now, 9 slot id ('' = place it here), 10 ticket id ('' = none),
# 11 finished-ticket TTL, 12 the Session JSON (given slot), or its own fields as an
# unclosed object the script completes with the slot's.
# Replies: {'ok', Session JSON}, {'client', session id} (the client has a live session of
# this app), {'queued'} (someone waits), {'none'} (no claimable slot), {'unknown'} (no
# slot serves the app), {'refused'} (the given slot or ticket fails its precondition).
# The ready-slot indexes it places over are derived from the tag (same hash slot).
_ALLOCATE = _TENANT + r"""
local sid, app, ckey = ARGV[1], ARGV[2], ARGV[3]
local K_slots = KEYS[1]
local tag = tag_of(K_slots)
local K_hosts, K_sess, K_cli = tag .. ':hosts', tag .. ':sessions', tag .. ':clients'
local K_queue, K_queues = tag .. ':queue:' .. app, tag .. ':queues'
local WINDOW = 32  -- equally ranked candidates compared per step (ties beyond it: lexical)
local function host_of(id) return string.match(id, '^(.*)/') end
local function gpu_ok(host, gpu) return gpu == '' or redis.call('HGET', tag .. ':gpu', host) == gpu end
-- Walks a score index a window at a time. `best(w)` gives the tied best candidates of
-- one window (ZRANGE WITHSCORES), or nil when the filter left none there; one of the
-- ties is taken by chance.
local function first_best(key, best, rnd)
  local off = 0
  while true do
    local w = redis.call('ZRANGE', key, off, off + WINDOW - 1, 'WITHSCORES')
    if #w == 0 then return nil end
    local ties = best(w)
    if ties then return ties[math.min(#ties, math.floor(rnd * #ties) + 1)] end
    off = off + WINDOW
  end
end
-- spread: least loaded, then the host with the most claimable slots, then chance.
local function spread(region, gpu, rnd)
  local fh, free_of = idx(tag, 'fh', app), {}
  return first_best(idx(tag, 'rz', app, region), function(w)
    local ties, best_pct, best_free = {}, nil, nil
    for i = 1, #w, 2 do
      local id, pct = w[i], tonumber(w[i + 1])
      if best_pct and pct > best_pct then break end
      local host = host_of(id)
      local free = free_of[host]
      if free == nil then  -- one lookup per host (false: filtered out by GPU model)
        free = gpu_ok(host, gpu) and (tonumber(redis.call('ZSCORE', fh, host)) or 0)
        free_of[host] = free
      end
      if free then
        if not best_pct or free > best_free then ties, best_pct, best_free = {id}, pct, free
        elseif free == best_free then ties[#ties + 1] = id end
      end
    end
    return best_pct and ties
  end, rnd)
end
-- pack: the host with the fewest claimable slots, then least loaded, then chance.
local function pack(region, gpu, rnd)
  local z = idx(tag, 'rz', app)
  return first_best(idx(tag, 'fh', app, region), function(w)
    local ties, best_free, best_pct = {}, nil, nil
    for i = 1, #w, 2 do
      local host, free = w[i], tonumber(w[i + 1])
      if best_free and free > best_free then break end
      local hc = gpu_ok(host, gpu) and redis.call('HGET', K_hosts, host)
      if hc then
        for _, id in ipairs(cjson.decode(hc).s) do
          local pct = redis.call('ZSCORE', z, id)
          if pct then
            pct = tonumber(pct)
            if not best_pct or pct < best_pct then ties, best_pct, best_free = {id}, pct, free
            elseif pct == best_pct then ties[#ties + 1] = id end
          end
        end
      end
    end
    return best_pct and ties
  end, rnd)
end
-- The requested region first (affinity, not a filter), then every region.
local function place(region, gpu, policy, rnd)
  local choose = policy == 'pack' and pack or spread
  if region ~= '' then
    local id = choose(region, gpu, rnd)
    if id then return id end
  end
  return choose(nil, gpu, rnd)
end
local function claimable(slot)
  if slot.state ~= 'ready' or slot.app ~= app then return false end
  local hc = redis.call('HGET', K_hosts, slot.host_id)
  if not hc then return false end
  hc = cjson.decode(hc)
  return not hc.d and not hc.x
end

local t, tkey
if ARGV[10] ~= '' then
  tkey = tag .. ':ticket:' .. ARGV[10]
  local tr = redis.call('GET', tkey)
  if not tr then return {'refused'} end
  t = cjson.decode(tr)
  if t.state ~= 'waiting' or t.request.app ~= app or truthy(t.left_at) then return {'refused'} end
elseif ARGV[9] == '' then
  if ckey ~= '' then
    local cur = redis.call('HGET', K_cli, ckey)
    local raw = cur and redis.call('HGET', K_sess, cur)
    if raw and cjson.decode(raw).app == app then return {'client', cur} end
  end
  if redis.call('ZCARD', K_queue) > 0 then return {'queued'} end  -- FIFO: nobody overtakes
end
local slot
if ARGV[9] ~= '' then
  local raw = redis.call('HGET', K_slots, ARGV[9])
  slot = raw and cjson.decode(raw)
  if not slot or not claimable(slot) then return {'refused'} end
else
  -- The indexes hold exactly the claimable slots; a slot that is not (a bug) is
  -- dropped from them and placement runs again, so it can never be given twice.
  for _ = 1, 8 do
    local id = place(ARGV[4], ARGV[5], ARGV[6], tonumber(ARGV[7]))
    if not id then break end
    local raw = redis.call('HGET', K_slots, id)
    local s = raw and cjson.decode(raw)
    if s and claimable(s) then slot = s; break end
    if s then unready(tag, s) else redis.call('ZREM', idx(tag, 'rz', app), id) end
  end
  if not slot then
    if tonumber(redis.call('HGET', tag .. ':apps', app) or '0') <= 0 then return {'unknown'} end
    return {'none'}
  end
end
local now = tonumber(ARGV[8])
local sess = ARGV[12]
if ARGV[9] == '' then  -- ARGV[12] is the session's own fields, '{...,': add the slot's
  local E = cjson.encode
  sess = sess .. '"slot_id":' .. E(slot.slot_id) .. ',"host_id":' .. E(slot.host_id) .. ',"streamer_id":'
    .. E(slot.streamer_id) .. ',"signaling_url":' .. E(slot.signaling_url) .. ',"region":' .. E(slot.region) .. '}'
end
slot.state = 'assigned'; slot.session_id = sid
redis.call('HSET', K_slots, slot.slot_id, enc(slot))
unready(tag, slot)
redis.call('HSET', K_sess, sid, sess)
if ARGV[9] == '' then
  index_session(tag, {session_id = sid, state = 'assigned', created_at = now, last_activity = now})
else
  index_session(tag, cjson.decode(sess))
end
if ckey ~= '' then redis.call('HSET', K_cli, ckey, sid) end
if t then
  t.state = 'served'; t.session_id = sid
  redis.call('SET', tkey, enc(t), 'EX', ARGV[11])
  redis.call('ZREM', K_queue, ARGV[10])
  if redis.call('ZCARD', K_queue) == 0 then redis.call('SREM', K_queues, app) end
  local ck = t.request.client_key
  local K_qcli = tag .. ':qclients:' .. app
  if truthy(ck) and redis.call('HGET', K_qcli, ck) == ARGV[10] then redis.call('HDEL', K_qcli, ck) end
end
return {'ok', sess}
"""

# {P:T}: end a session. KEYS: sessions. ARGV: tag, session id, reason, now.
_END = _TENANT + r"""
-- ARGV[5..7], when given: the state, last_activity and disconnected_at the caller's
-- verdict was based on; end only if the session has not moved on since.
if ARGV[5] and ARGV[5] ~= '' then
  local raw = redis.call('HGET', KEYS[1], ARGV[2])
  if not raw then return false end
  local s = cjson.decode(raw)
  if s.state ~= ARGV[5] or s.last_activity ~= tonumber(ARGV[6]) then return false end
  -- Compare as numbers: tostring() would keep only 14 digits of an epoch time.
  local dis = s.disconnected_at
  local has_dis = dis ~= NULL and dis ~= nil
  if ARGV[7] == '' then
    if has_dis then return false end
  elseif not has_dis or dis ~= tonumber(ARGV[7]) then
    return false
  end
end
return end_sess(ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]))
"""

# {P:T}: reattach / connect / disconnect / touch. KEYS: sessions. ARGV: op, id, now.
_SESSION_OP = _PRELUDE + r"""
local raw = redis.call('HGET', KEYS[1], ARGV[2])
if not raw then return false end
local s = cjson.decode(raw)
if s.state == 'ended' then return false end
local op, now, was = ARGV[1], tonumber(ARGV[3]), s.state
if op == 'reattach' then
  if s.state == 'disconnected' then s.state = 'assigned'; s.disconnected_at = NULL end
  s.last_activity = now
elseif op == 'connect' then
  s.state = 'connected'
  if s.connected_at == NULL or s.connected_at == 0 then s.connected_at = now end
  s.disconnected_at = NULL
  s.last_activity = now
elseif op == 'disconnect' then
  if s.state ~= 'connected' then return false end
  s.state = 'disconnected'; s.disconnected_at = now
else
  s.last_activity = now
end
local out = enc(s)
redis.call('HSET', KEYS[1], ARGV[2], out)
index_session(tag_of(KEYS[1]), s, was)
if op == 'touch' then return 1 end
return out
"""

# {P:T}: the live sessions whose timeout is due, most overdue first, with how long.
# KEYS: sessions. ARGV: tag, now, connect timeout, reconnect grace, idle timeout,
# max length, limit. A timeout of 0 is off, except the grace (as in due_endings).
_DUE = _PRELUDE + r"""
local tag, now, limit = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[7])
-- The counts differ only where sessions predate the indexes (an upgrade): rebuild once.
if redis.call('HLEN', KEYS[1]) ~= redis.call('ZCARD', tag .. ':created') then
  for _, k in ipairs({'created', 'since:assigned', 'since:connected', 'since:disconnected'}) do
    redis.call('DEL', tag .. ':' .. k)
  end
  for _, raw in ipairs(redis.call('HVALS', KEYS[1])) do index_session(tag, cjson.decode(raw)) end
end
local late, ids = {}, {}
-- One rule of due_endings per index: due when now - score > timeout, in doubles as
-- Python computes it. The range bound is a hair above now - timeout (rounding); the
-- exact test decides, and as the scores rise the due ones come first.
local function scan(index, timeout)
  local bound = now - timeout + (math.abs(now) + math.abs(timeout)) * 1e-14
  local r = redis.call('ZRANGEBYSCORE', tag .. index, '-inf', string.format('%.17g', bound),
                       'WITHSCORES', 'LIMIT', 0, limit)
  for i = 1, #r, 2 do
    local age = now - tonumber(r[i + 1])
    if not (age > timeout) then break end
    local sid = r[i]
    if late[sid] == nil then ids[#ids + 1] = sid end
    if late[sid] == nil or age - timeout > late[sid] then late[sid] = age - timeout end
  end
end
local connect, grace, idle, max = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
if max ~= 0 then scan(':created', max) end
if connect ~= 0 then scan(':since:assigned', connect) end
scan(':since:disconnected', grace)
if idle ~= 0 then scan(':since:connected', idle) end
table.sort(ids, function(a, b)
  if late[a] ~= late[b] then return late[a] > late[b] end
  return a < b
end)
local out = {}
for i = 1, math.min(#ids, limit) do
  local raw = redis.call('HGET', KEYS[1], ids[i])
  if raw then out[#out + 1] = enc(late[ids[i]]); out[#out + 1] = raw end
end
return out
"""

# {P:T}: the client's live session. KEYS: clients, sessions. ARGV: client key.
_FOR_CLIENT = r"""
local sid = redis.call('HGET', KEYS[1], ARGV[1])
if not sid then return false end
return redis.call('HGET', KEYS[2], sid)
"""

# {P:T}: append a ticket, or give its client's waiting ticket back (heard, not left).
# KEYS: queue:<app>, ticket:<id>, qseq, queues, qclients:<app>.
# ARGV: ticket id, Ticket JSON, max length, app, client key, now, tag.
# Returns {place or -1 (full), whether the ticket key exists, the rejoined Ticket JSON or ''}.
_ENQUEUE = _PRELUDE + r"""
if ARGV[5] ~= '' then
  local mine = redis.call('HGET', KEYS[5], ARGV[5])
  local raw = mine and redis.call('GET', ARGV[7] .. ':ticket:' .. mine)
  if raw then
    local t = cjson.decode(raw)
    local r = redis.call('ZRANK', KEYS[1], mine)
    if t.state == 'waiting' and r then
      t.seen_at = tonumber(ARGV[6]); t.left_at = NULL
      local out = enc(t)
      redis.call('SET', ARGV[7] .. ':ticket:' .. mine, out)
      return {r + 1, 0, out}
    end
  end
end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
  return {-1, redis.call('EXISTS', KEYS[2]), ''}
end
redis.call('SET', KEYS[2], ARGV[2])
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  redis.call('ZADD', KEYS[1], redis.call('INCR', KEYS[3]), ARGV[1])
end
redis.call('SADD', KEYS[4], ARGV[4])
if ARGV[5] ~= '' then redis.call('HSET', KEYS[5], ARGV[5], ARGV[1]) end
return {redis.call('ZCARD', KEYS[1]), 1, ''}
"""

# {P:T}: a waiting ticket's client was heard / hung up its stream. KEYS: ticket:<id>.
# ARGV: 'heard' | 'left', now.
_TICKET_MARK = _PRELUDE + r"""
local raw = redis.call('GET', KEYS[1])
if not raw then return 0 end
local t = cjson.decode(raw)
if t.state ~= 'waiting' then return 0 end
if ARGV[1] == 'heard' then
  t.seen_at = tonumber(ARGV[2]); t.left_at = NULL
elseif truthy(t.left_at) then
  return 1
else
  t.left_at = tonumber(ARGV[2])
end
redis.call('SET', KEYS[1], enc(t))
return 1
"""

# {P:T}: WAITING -> state. KEYS: ticket:<id>. ARGV: tag, ticket id, state, reason, TTL,
# and, when ARGV[6] is '1', the seen_at and left_at ('' = none) the verdict was based on.
_FINISH = _PRELUDE + r"""
local raw = redis.call('GET', KEYS[1])
if not raw then return 0 end
local t = cjson.decode(raw)
if t.state ~= 'waiting' then return 0 end
if ARGV[6] == '1' then
  -- Compare as numbers: tostring() would keep only 14 digits of an epoch time.
  local function same(v, arg)
    local has = v ~= nil and v ~= NULL
    if arg == '' then return not has end
    return has and v == tonumber(arg)
  end
  if not same(t.seen_at, ARGV[7]) or not same(t.left_at, ARGV[8]) then return 0 end
end
t.state = ARGV[3]; t.reason = ARGV[4]
redis.call('SET', KEYS[1], enc(t), 'EX', ARGV[5])
local q = ARGV[1] .. ':queue:' .. t.request.app
redis.call('ZREM', q, ARGV[2])
if redis.call('ZCARD', q) == 0 then redis.call('SREM', ARGV[1] .. ':queues', t.request.app) end
local ck = t.request.client_key
local K_qcli = ARGV[1] .. ':qclients:' .. t.request.app
if truthy(ck) and redis.call('HGET', K_qcli, ck) == ARGV[2] then redis.call('HDEL', K_qcli, ck) end
return 1
"""

# {P:T}: 1-based place of a waiting ticket. KEYS: ticket:<id>. ARGV: tag, ticket id.
_POSITION = r"""
local raw = redis.call('GET', KEYS[1])
if not raw then return false end
local t = cjson.decode(raw)
if t.state ~= 'waiting' then return false end
local r = redis.call('ZRANK', ARGV[1] .. ':queue:' .. t.request.app, ARGV[2])
if not r then return false end
return r + 1
"""

# {P:T}: the first tickets of a queue. KEYS: queue:<app>. ARGV: tag, limit.
_WAITING = r"""
local parts = {}
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[2]) - 1)) do
  local raw = redis.call('GET', ARGV[1] .. ':ticket:' .. id)
  if raw then parts[#parts + 1] = raw end
end
return '[' .. table.concat(parts, ',') .. ']'
"""

# {P:T}: non-empty queues of the tenant. KEYS: queues. ARGV: tag.
_QUEUES = r"""
local out = {}
for _, app in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local n = redis.call('ZCARD', ARGV[1] .. ':queue:' .. app)
  if n > 0 then out[#out + 1] = app; out[#out + 1] = n else redis.call('SREM', KEYS[1], app) end
end
return out
"""


# --- the store ---------------------------------------------------------------------------

P = ParamSpec("P")
R = TypeVar("R")


def _guarded(fn: Callable[Concatenate[RedisStore, P], Coroutine[Any, Any, R]]
             ) -> Callable[Concatenate[RedisStore, P], Coroutine[Any, Any, R]]:
    """Run under the store's timeout; Redis being away becomes BackendUnavailable."""

    async def wrapper(self: RedisStore, /, *args: P.args, **kwargs: P.kwargs) -> R:
        task = asyncio.current_task()
        cancels = 0 if task is None else task.cancelling()
        try:
            async with asyncio.timeout(self.timeout_s):
                if not self._client_ready:
                    await self._ready_client()
                result = await fn(self, *args, **kwargs)
        except _UNAVAILABLE as exc:
            _reraise_cancellation(task, cancels, exc)
            raise BackendUnavailable(f"redis is unavailable: {exc}") from exc
        except rx.RedisClusterException as exc:  # also raised for our own mistakes: only
            _reraise_cancellation(task, cancels, exc)
            if isinstance(exc.__cause__, _UNAVAILABLE):  # "cannot connect" is the backend's
                raise BackendUnavailable(f"redis cluster is unavailable: {exc}") from exc
            raise
        except TimeoutError as exc:
            _reraise_cancellation(task, cancels, exc)
            raise BackendUnavailable(f"redis did not answer within {self.timeout_s} s") from exc
        _reraise_cancellation(task, cancels, None)
        return result

    wrapper.__name__, wrapper.__qualname__, wrapper.__doc__ = fn.__name__, fn.__qualname__, fn.__doc__
    return wrapper


def _reraise_cancellation(task: asyncio.Task[Any] | None, cancels: int, cause: BaseException | None) -> None:
    """A task cancelled during an operation must see CancelledError.

    redis-py 8.1's asyncio client loses cancellations: one that lands while a command
    is on the wire comes back as ConnectionError or TimeoutError, or the command is
    retried and simply returns. Turned into BackendUnavailable, or into a normal result,
    the caller runs on: a loop asked to stop never stops (seen: a sweep loop hung in a
    test's teardown). ``cancels`` is the task's count on entry, so only a cancellation
    requested during this operation counts (``asyncio.timeout`` takes back its own).
    """
    if task is not None and task.cancelling() > cancels:
        raise asyncio.CancelledError() from cause


def _escape(part: str) -> str:
    if "%" in part or "{" in part or "}" in part:
        return part.replace("%", "%25").replace("{", "%7B").replace("}", "%7D")
    return part


def _num(x: float) -> str:
    return repr(float(x))


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


_Call = tuple[Any, Sequence[str], Sequence[Any]]


def _cmd(*args: str) -> _Call:
    return (None, (), args)


def _session_head(request: AllocationRequest, session_id: str, now: float) -> bytes:
    """A new session's own fields as an unclosed JSON object; the allocation script adds
    the placed slot's fields and closes it (cheaper than encoding a table in Lua)."""
    t = _num(now).encode()
    return b"".join((
        b'{"session_id":', _enc.encode(session_id), b',"tenant":', _enc.encode(request.tenant),
        b',"app":', _enc.encode(request.app), b',"client_key":', _enc.encode(request.client_key),
        b',"state":"assigned","created_at":', t, b',"last_activity":', t,
        b',"connected_at":null,"disconnected_at":null,"ended_at":null,"end_reason":null,'))


class _Meta(msgspec.Struct, frozen=True):
    host_id: str
    host: Host
    ver: int
    inc: int
    specs: dict[str, list[Slot]]
    old: list[str]
    tmap: dict[str, list[str]]
    order: float


class RedisStore:
    """The Store interface over Redis or Redis Cluster (see the module docstring)."""

    def __init__(self, client: Redis | RedisCluster, *, prefix: str = "pf",
                 timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        if not prefix or "{" in prefix or "}" in prefix:
            raise ValueError(f"the key prefix must be non-empty and have no braces: {prefix!r}")
        self._r: Any = client
        self._cluster = isinstance(client, RedisCluster)
        self._client_ready = not self._cluster
        self._client_lock = asyncio.Lock()
        self.prefix = prefix
        self.timeout_s = timeout_s
        self._g = "{" + prefix + "}"
        self._tags: dict[str, str] = {}
        self._session_tenant: dict[str, str] = {}
        self._ticket_tenant: dict[str, str] = {}
        self._queued: list[tuple[Sequence[_Call], asyncio.Future[list[Any]]]] = []  # next round trip's
        self._sending: set[asyncio.Future[None]] = set()
        script = self._r.register_script
        self._register = script(_REGISTER)
        self._hb_host = script(_HB_HOST)
        self._drain = script(_DRAIN)
        self._expire = script(_EXPIRE)
        self._meta = script(_META)
        self._clean = script(_CLEAN)
        self._list_hosts = script(_LIST_HOSTS)
        self._apply = script(_APPLY)
        self._hb_slots = script(_HB_SLOTS)
        self._allocate = script(_ALLOCATE)
        self._end = script(_END)
        self._sess_script = script(_SESSION_OP)
        self._due = script(_DUE)
        self._for_client = script(_FOR_CLIENT)
        self._enqueue = script(_ENQUEUE)
        self._ticket_mark = script(_TICKET_MARK)
        self._finish = script(_FINISH)
        self._position = script(_POSITION)
        self._waiting = script(_WAITING)
        self._queues = script(_QUEUES)
        self._forget = script(_FORGET)
        self._drop_hosts = script(_DROP_HOSTS)
        self._take_records = script(_TAKE_RECORDS)
        self._ack_records = script(_ACK_RECORDS)

    @classmethod
    def from_url(cls, url: str, *, prefix: str = "pf", timeout_s: float = DEFAULT_TIMEOUT_S) -> RedisStore:
        """``redis://``, ``rediss://``, ``unix://``; ``?cluster=1`` picks Redis Cluster."""
        cluster = False
        if "?" in url:
            base, query = url.split("?", 1)
            kept = []
            for item in query.split("&"):
                name, _, value = item.partition("=")
                if name == "cluster":
                    cluster = value.lower() in ("1", "true", "yes", "on", "")
                elif item:
                    kept.append(item)
            url = base + ("?" + "&".join(kept) if kept else "")
        if cluster:
            if url.startswith("unix:"):
                raise ValueError("Redis Cluster is reached over TCP: use redis:// or rediss:// with cluster=1")
            return cls(RedisCluster.from_url(url), prefix=prefix, timeout_s=timeout_s)
        # redis-py's default pool fails at 100 connections in use; this one waits for
        # a free connection instead (within the operation's timeout).
        kw: dict[str, Any] = {"timeout": None}
        if "max_connections=" not in url:
            kw["max_connections"] = DEFAULT_MAX_CONNECTIONS
        return cls(Redis.from_pool(BlockingConnectionPool.from_url(url, **kw)), prefix=prefix, timeout_s=timeout_s)

    async def _ready_client(self) -> None:
        """redis-py's asyncio RedisCluster (8.1) races its own first ``initialize()``
        when a fresh client gets concurrent commands (a connection is used while it is
        being replaced: AttributeError on ``_writer``). Initialize it once, alone."""
        async with self._client_lock:
            if not self._client_ready:
                await self._r.initialize()
                self._client_ready = True

    # --- keys -------------------------------------------------------------------------

    def _tag(self, tenant: str) -> str:
        tag = self._tags.get(tenant)
        if tag is None:
            if len(self._tags) > _CACHE_MAX:
                self._tags.clear()
            tag = self._tags[tenant] = "{" + self.prefix + ":" + _escape(tenant) + "}"
        return tag

    def _host_key(self, host_id: str) -> str:
        return f"{self._g}:host:{host_id}"

    def _sid_key(self, session_id: str) -> str:
        return f"{self.prefix}:sid:{session_id}"

    def _tid_key(self, ticket_id: str) -> str:
        return f"{self.prefix}:tid:{ticket_id}"

    @staticmethod
    def _remember(cache: dict[str, str], key: str, tenant: str) -> None:
        if len(cache) > _CACHE_MAX:
            cache.clear()
        cache[key] = tenant

    async def _session_tag(self, session_id: str) -> str | None:
        return await self._looked_up_tag(self._session_tenant, session_id, self._sid_key)

    async def _ticket_tag(self, ticket_id: str) -> str | None:
        return await self._looked_up_tag(self._ticket_tenant, ticket_id, self._tid_key)

    async def _looked_up_tag(self, cache: dict[str, str], id_: str, key: Callable[[str], str]) -> str | None:
        """The tag of the tenant a session or ticket lookup names (immutable: cached)."""
        tenant = cache.get(id_)
        if tenant is None:
            raw = await self._r.get(key(id_))
            if raw is None:
                return None
            tenant = _text(raw)
            self._remember(cache, id_, tenant)
        return self._tag(tenant)

    async def _tenants(self) -> list[str]:
        return sorted(_text(t) for t in await self._r.smembers(f"{self._g}:tenants"))

    # --- script plumbing ----------------------------------------------------------------

    async def _batch(self, calls: Sequence[_Call], *, ordered: bool = False) -> list[Any]:
        """One round trip. A call is (script, keys, args), or (None, (), command) for a
        plain command. A script the server does not know (restart, failover, new cluster
        node) is loaded and that one call is run again: it had no effect the first time.

        Batches asked for in the same event-loop turn share one pipeline (callers still
        get only their own results or error): under load, concurrent allocations cost
        one write and one read instead of one each; alone, a batch leaves at once.

        redis-py refuses EVALSHA in a cluster pipeline, so on a cluster the calls run
        concurrently instead; ``ordered`` then runs the plain commands first."""
        if not calls:
            return []
        if self._cluster:
            return await self._gather(calls, ordered)
        loop = asyncio.get_running_loop()
        done: asyncio.Future[list[Any]] = loop.create_future()
        self._queued.append((calls, done))
        if len(self._queued) == 1:
            loop.call_soon(self._send_queued)
        return await done

    def _send_queued(self) -> None:
        queued, self._queued = self._queued, []
        task = asyncio.ensure_future(self._send(queued))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, queued: list[tuple[Sequence[_Call], asyncio.Future[list[Any]]]]) -> None:
        calls = [call for batch, _ in queued for call in batch]
        try:
            pipe = self._r.pipeline(transaction=False)
            for script, keys, args in calls:
                if script is None:
                    pipe.execute_command(*args)
                else:
                    pipe.evalsha(script.sha, len(keys), *keys, *args)
            results: list[Any] = await pipe.execute(raise_on_error=False)
            for i, res in enumerate(results):
                if isinstance(res, rx.NoScriptError):
                    script, keys, args = calls[i]
                    try:
                        results[i] = await script(keys, args)
                    except Exception as exc:  # noqa: BLE001 - that caller's error
                        results[i] = exc
        except BaseException as exc:  # the round trip failed: every caller in it hears why
            for _, done in queued:
                if not done.done():
                    done.set_exception(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        start = 0
        for batch, done in queued:
            mine = results[start:start + len(batch)]
            start += len(batch)
            if done.done():  # its caller gave up (timeout, cancellation)
                continue
            error = next((r for r in mine if isinstance(r, BaseException)), None)
            if error is None:
                done.set_result(mine)
            else:
                done.set_exception(error)

    async def _gather(self, calls: Sequence[_Call], ordered: bool) -> list[Any]:
        def run(call: _Call) -> Awaitable[Any]:
            script, keys, args = call
            pending: Awaitable[Any] = self._r.execute_command(*args) if script is None else script(keys, args)
            return pending

        if not ordered:
            return list(await asyncio.gather(*map(run, calls)))
        results: list[Any] = [None] * len(calls)
        for first in (True, False):
            todo = [i for i, call in enumerate(calls) if (call[0] is None) is first]
            for i, res in zip(todo, await asyncio.gather(*(run(calls[i]) for i in todo)), strict=True):
                results[i] = res
        return results

    def _forget_sessions(self, ended: Iterable[Session]) -> list[_Call]:
        dels: list[_Call] = []
        for s in ended:
            self._session_tenant.pop(s.session_id, None)
            dels.append(_cmd("DEL", self._sid_key(s.session_id)))
        return dels

    async def _propagate(self, host_ids: Sequence[str], now: float | None) -> list[Session]:
        """Bring every tenant's copy of these hosts up to their records (idempotent).

        Without ``now`` (``set_draining`` has no clock) a dead host is left to the next
        sweep, which ends its sessions at the sweep's time, and anything else that ends
        (an older incarnation's leftovers after a crash) ends at the host's last heartbeat."""
        if not host_ids:
            return []
        rows = await self._meta([f"{self._g}:hosts"], [self._g, *host_ids])
        metas = []
        for row in rows:
            hid, rec, ver, inc, specs, old, tmap, order = row
            metas.append(_Meta(_text(hid), _host.decode(rec), int(ver), int(inc),
                               msgspec.json.decode(specs, type=dict[str, list[Slot]]),
                               msgspec.json.decode(old, type=list[str]), _strmap.decode(tmap), float(order)))
        metas.sort(key=lambda m: m.order)
        if now is None:
            metas = [m for m in metas if not m.host.dead]
        calls: list[_Call] = []
        owners: list[_Meta] = []
        for m in metas:
            tenants = list(m.specs) + [t for t in m.old if t not in m.specs]
            for tenant in tenants:
                tag = self._tag(tenant)
                calls.append((self._apply, [f"{tag}:hosts"],
                              [tag, m.host_id, m.inc, m.ver, "1" if m.host.draining else "0",
                               "1" if m.host.dead else "0", _enc.encode(m.specs.get(tenant, [])),
                               _num(m.host.last_heartbeat if now is None else now)]))
                owners.append(m)
        results = await self._batch(calls)
        ended: list[tuple[float, int, Session]] = []
        for m, res in zip(owners, results, strict=True):
            place = {sid: i for i, sid in reversed(list(enumerate(m.host.slot_ids)))}
            for raw in res:
                s = _session.decode(raw)
                ended.append((m.order, place.get(s.slot_id, len(place)), s))
        ended.sort(key=lambda e: (e[0], e[1]))
        sessions = [s for _, _, s in ended]
        clean: list[str] = [self._g]
        for m in metas:
            clean += [m.host_id, str(m.ver)]
        await self._batch([*self._forget_sessions(sessions),
                           (self._clean, [f"{self._g}:dirty"], clean)])
        return sessions

    # --- hosts ------------------------------------------------------------------------

    @_guarded
    async def register_host(self, reg: HostRegistration, now: float) -> Host:
        ids = [slot_id(reg.host_id, s.index) for s in reg.slots]
        host = Host(host_id=reg.host_id, boot_id=reg.boot_id, region=reg.region, az=reg.az,
                    gpu_model=reg.gpu_model, signaling_url=reg.signaling_url, last_heartbeat=now,
                    slot_ids=ids)
        by_index = {s.index: s for s in reg.slots}  # a repeated index: the last spec wins
        specs: dict[str, list[Slot]] = {}
        tmap: dict[str, list[str]] = {}
        for index, spec in by_index.items():
            sid = slot_id(reg.host_id, index)
            specs.setdefault(spec.tenant, []).append(Slot(
                slot_id=sid, host_id=reg.host_id, tenant=spec.tenant, app=spec.app, region=reg.region,
                gpu_model=reg.gpu_model, streamer_id=spec.streamer_id, signaling_url=reg.signaling_url))
            tmap.setdefault(spec.tenant, []).append(sid)
        g = self._g
        res = await self._register(
            [self._host_key(reg.host_id), f"{g}:hosts", f"{g}:hb", f"{g}:dirty", f"{g}:tenants", f"{g}:hseq",
             f"{g}:dead"],
            [reg.host_id, reg.boot_id, _num(now), _enc.encode(host), _enc.encode(tmap), _enc.encode(specs),
             _enc.encode(list(specs))])
        if _text(res[0]) == "conflict":
            raise HostConflict(f"host {reg.host_id} is registered and alive under another boot id")
        if int(res[2]):
            ended = await self._propagate([reg.host_id], now)
            if ended:  # only after a crash left a dead incarnation's sessions running
                await self._r.rpush(f"{g}:outbox", *(_enc.encode(s) for s in ended))
        return _host.decode(res[1])

    @_guarded
    async def heartbeat(self, host_id: str, hb: Heartbeat, now: float) -> tuple[list[Session], HeartbeatReply]:
        g = self._g
        res = await self._hb_host([self._host_key(host_id), f"{g}:hb", f"{g}:dirty"],
                                  [host_id, hb.boot_id, _num(now), _num(hb.nvenc_load), _num(hb.gpu_load)])
        status = _text(res[0])
        if status == "unknown":
            raise UnknownHost(f"host {host_id} is not registered")
        if status == "conflict":
            raise HostConflict(f"host {host_id} is registered under another boot id")
        host = _host.decode(res[1])
        tmap = _strmap.decode(res[2])
        inc = int(res[3])
        ended: list[tuple[int, Session]] = []
        if int(res[4]):
            ended += [(-1, s) for s in await self._propagate([host_id], now)]
        tenant_of = {sid: tenant for tenant, sids in tmap.items() for sid in sids}
        reports: dict[str, list[tuple[int, str, str, float, float, str | None]]] = {t: [] for t in tmap}
        for pos, r in enumerate(hb.slots):
            sid = slot_id(host_id, r.index)
            tenant = tenant_of.get(sid)
            if tenant is not None:
                reports[tenant].append((pos, sid, r.state.value, float(r.nvenc_load), float(r.gpu_load),
                                        r.reset_for))
        calls = []
        for tenant, rs in reports.items():
            tag = self._tag(tenant)
            calls.append((self._hb_slots, [f"{tag}:hosts"], [tag, host_id, inc, _num(now), _enc.encode(rs)]))
        resets: dict[str, str] = {}
        for out in await self._batch(calls):
            if not int(out[0]):
                continue  # the host died or came back meanwhile: this report came before that
            flat = out[1]
            ended += [(int(flat[i]), _session.decode(flat[i + 1])) for i in range(0, len(flat), 2)]
            flat = out[2]
            resets.update((_text(flat[i]), _text(flat[i + 1])) for i in range(0, len(flat), 2))
        ended.sort(key=lambda e: e[0])
        sessions = [s for _, s in ended]
        if sessions:
            await self._batch(self._forget_sessions(sessions))
        reply = HeartbeatReply(
            reset=[SlotReset(index=int(sid.rsplit("/", 1)[1]), session_id=resets[sid])
                   for sid in host.slot_ids if sid in resets],
            draining=host.draining)
        return sessions, reply

    @_guarded
    async def set_draining(self, host_id: str, draining: bool) -> Host:
        res = await self._drain([self._host_key(host_id), f"{self._g}:dirty"], [host_id, "1" if draining else "0"])
        if _text(res[0]) == "unknown":
            raise UnknownHost(f"host {host_id} is not registered")
        ended = await self._propagate([host_id], None)
        if ended:  # only after a crash left an older incarnation's sessions running
            await self._r.rpush(f"{self._g}:outbox", *(_enc.encode(s) for s in ended))
        return _host.decode(res[1])

    @_guarded
    async def expire_hosts(self, now: float, ttl_s: float) -> list[Session]:
        g = self._g
        dirty, outbox = await self._expire(
            [f"{g}:hb", f"{g}:dirty", f"{g}:outbox", f"{g}:dead"],
            [g, _num(now), _num(ttl_s), _num(now - ttl_s + _HB_SLACK_S)])
        ended = [_session.decode(raw) for raw in outbox]
        return ended + await self._propagate([_text(h) for h in dirty], now)

    @_guarded
    async def forget_hosts(self, now: float, retention_s: float) -> list[str]:
        g = self._g
        ids = [_text(h) for h in await self._forget([f"{g}:dead", f"{g}:dirty"], [g, _num(now), _num(retention_s)])]
        if not ids:
            return []
        ended = await self._propagate(ids, now)
        if ended:  # only after a crash left a dead incarnation's sessions running
            await self._r.rpush(f"{g}:outbox", *(_enc.encode(s) for s in ended))
        dropped = await self._drop_hosts([f"{g}:dead", f"{g}:dirty", f"{g}:hosts"], [g, *ids])
        return sorted(_text(h) for h in dropped)

    # --- pool -------------------------------------------------------------------------

    @_guarded
    async def ready_slots(self, tenant: str, app: str) -> list[Slot]:
        return _slots.decode(b"[" + b",".join(await self._r.hvals(f"{self._tag(tenant)}:ready:{app}")) + b"]")

    @_guarded
    async def serves(self, tenant: str, app: str) -> bool:
        n = await self._r.hget(f"{self._tag(tenant)}:apps", app)
        return n is not None and int(n) > 0

    @_guarded
    async def slot_count(self, tenant: str, app: str) -> int:
        n = await self._r.hget(f"{self._tag(tenant)}:live", app)
        return 0 if n is None else max(int(n), 0)

    def _allocate_calls(self, request: AllocationRequest, session_id: str, now: float, *, policy: str,
                        rnd: float, slot_id: str = "", ticket_id: str | None = None,
                        session: Session | None = None) -> list[_Call]:
        """One allocation as sent: the session's tenant lookup, then the allocation script
        (pipelined, one round trip). The benchmark's ceiling sends exactly these."""
        tag = self._tag(request.tenant)
        app = request.app
        return [
            _cmd("SET", self._sid_key(session_id), request.tenant),
            (self._allocate, [f"{tag}:slots"],
             [session_id, app, request.client_key or "", request.region or "", request.gpu_model or "", policy,
              repr(rnd), _num(now), slot_id, ticket_id or "", FINISHED_TICKET_TTL_S,
              _enc.encode(session) if session is not None else _session_head(request, session_id, now)])]

    async def _run_allocate(self, calls: list[_Call], tenant: str, session_id: str,
                            ticket_id: str | None) -> Any:
        reply = (await self._batch(calls))[1]
        if _text(reply[0]) != "ok":
            await self._r.delete(self._sid_key(session_id))
            return reply
        self._remember(self._session_tenant, session_id, tenant)
        if ticket_id is not None:
            await self._r.expire(self._tid_key(ticket_id), FINISHED_TICKET_TTL_S)
        return reply

    @_guarded
    async def allocate(self, request: AllocationRequest, session_id: str, now: float, *, policy: str,
                       ticket_id: str | None = None) -> Session | Returning | NoClaim:
        calls = self._allocate_calls(request, session_id, now, policy=policy, rnd=random.random(),
                                     ticket_id=ticket_id)
        reply = await self._run_allocate(calls, request.tenant, session_id, ticket_id)
        status = _text(reply[0])
        if status == "ok":
            return _session.decode(reply[1])
        if status == "client":
            return Returning(_text(reply[1]))
        return _NO_CLAIM[status]

    @_guarded
    async def claim_slot(self, slot_id: str, session: Session, ticket_id: str | None = None) -> bool:
        request = AllocationRequest(tenant=session.tenant, app=session.app, client_key=session.client_key)
        calls = self._allocate_calls(request, session.session_id, session.created_at, policy="spread", rnd=0.0,
                                     slot_id=slot_id, ticket_id=ticket_id, session=session)
        reply = await self._run_allocate(calls, session.tenant, session.session_id, ticket_id)
        return _text(reply[0]) == "ok"

    # --- sessions ---------------------------------------------------------------------

    @_guarded
    async def session(self, session_id: str) -> Session | None:
        tag = await self._session_tag(session_id)
        raw = None if tag is None else await self._r.hget(f"{tag}:sessions", session_id)
        return None if raw is None else _session.decode(raw)

    @_guarded
    async def session_for_client(self, tenant: str, client_key: str) -> Session | None:
        tag = self._tag(tenant)
        raw = await self._for_client([f"{tag}:clients", f"{tag}:sessions"], [client_key])
        return None if raw is None else _session.decode(raw)

    async def _session_op(self, op: str, session_id: str, now: float) -> Any:
        tag = await self._session_tag(session_id)
        if tag is None:
            return None
        return await self._sess_script([f"{tag}:sessions"], [op, session_id, _num(now)])

    @_guarded
    async def reattach(self, session_id: str, now: float) -> Session | None:
        raw = await self._session_op("reattach", session_id, now)
        return None if raw is None else _session.decode(raw)

    @_guarded
    async def mark_connected(self, session_id: str, now: float) -> Session | None:
        raw = await self._session_op("connect", session_id, now)
        return None if raw is None else _session.decode(raw)

    @_guarded
    async def mark_disconnected(self, session_id: str, now: float) -> Session | None:
        raw = await self._session_op("disconnect", session_id, now)
        return None if raw is None else _session.decode(raw)

    @_guarded
    async def touch(self, session_id: str, now: float) -> None:
        await self._session_op("touch", session_id, now)

    @_guarded
    async def end_session(self, session_id: str, reason: EndReason, now: float, *,
                          if_unchanged: Session | None = None) -> Session | None:
        tag = await self._session_tag(session_id)
        if tag is None:
            return None
        args = [tag, session_id, EndReason(reason).value, _num(now)]
        if if_unchanged is not None:
            seen = if_unchanged
            args += [str(seen.state), _num(seen.last_activity),
                     "" if seen.disconnected_at is None else _num(seen.disconnected_at)]
            raw = await self._end(keys=[f"{tag}:sessions"], args=args)
            if not raw:
                return None
            self._session_tenant.pop(session_id, None)
            await self._r.delete(self._sid_key(session_id))
            return _session.decode(raw)
        self._session_tenant.pop(session_id, None)
        raw, _ = await self._batch([
            (self._end, [f"{tag}:sessions"], args),
            _cmd("DEL", self._sid_key(session_id))])
        return None if raw is None else _session.decode(raw)

    @_guarded
    async def due_sessions(self, now: float, *, connect_timeout_s: float, reconnect_grace_s: float,
                           idle_timeout_s: float, max_session_s: float, limit: int) -> list[Session]:
        if limit <= 0:
            return []
        args = [_num(now), _num(connect_timeout_s), _num(reconnect_grace_s), _num(idle_timeout_s),
                _num(max_session_s), int(limit)]
        calls: list[_Call] = []
        for tenant in await self._tenants():
            tag = self._tag(tenant)
            calls.append((self._due, [f"{tag}:sessions"], [tag, *args]))
        found: list[tuple[float, bytes]] = []
        for flat in await self._batch(calls):
            found += [(float(flat[i]), flat[i + 1]) for i in range(0, len(flat), 2)]
        found.sort(key=lambda f: -f[0])  # the most overdue of all tenants; decode only those
        return _sessions.decode(b"[" + b",".join(raw for _, raw in found[:limit]) + b"]")

    # --- queue ------------------------------------------------------------------------

    @_guarded
    async def enqueue(self, ticket: Ticket, max_length: int) -> tuple[Ticket, int]:
        tenant, app, tid = ticket.request.tenant, ticket.request.app, ticket.ticket_id
        tag = self._tag(tenant)
        mapping = self._tid_key(tid)
        _, _, (n, existed, mine) = await self._batch([
            _cmd("SADD", f"{self._g}:tenants", tenant),
            _cmd("SET", mapping, tenant),
            (self._enqueue,
             [f"{tag}:queue:{app}", f"{tag}:ticket:{tid}", f"{tag}:qseq", f"{tag}:queues", f"{tag}:qclients:{app}"],
             [tid, _enc.encode(ticket), int(max_length), app, ticket.request.client_key or "",
              _num(ticket.enqueued_at), tag])], ordered=True)
        if int(n) < 0 or mine:
            if not int(existed):
                await self._r.delete(mapping)
            if mine:  # the client's own waiting ticket came back; the new id was never used
                return _ticket.decode(mine), int(n)
            raise QueueFull(f"the queue for {app} is full ({max_length} waiting)")
        self._remember(self._ticket_tenant, tid, tenant)
        return ticket, int(n)

    @_guarded
    async def ticket(self, ticket_id: str) -> Ticket | None:
        tag = await self._ticket_tag(ticket_id)
        raw = None if tag is None else await self._r.get(f"{tag}:ticket:{ticket_id}")
        return None if raw is None else _ticket.decode(raw)

    async def _mark_ticket(self, op: str, ticket_id: str, now: float) -> bool:
        tag = await self._ticket_tag(ticket_id)
        if tag is None:
            return False
        return bool(int(await self._ticket_mark([f"{tag}:ticket:{ticket_id}"], [op, _num(now)])))

    @_guarded
    async def ticket_heard(self, ticket_id: str, now: float) -> bool:
        return await self._mark_ticket("heard", ticket_id, now)

    @_guarded
    async def ticket_left(self, ticket_id: str, now: float) -> bool:
        return await self._mark_ticket("left", ticket_id, now)

    @_guarded
    async def position(self, ticket_id: str) -> int | None:
        tag = await self._ticket_tag(ticket_id)
        if tag is None:
            return None
        res = await self._position([f"{tag}:ticket:{ticket_id}"], [tag, ticket_id])
        return None if res is None else int(res)

    @_guarded
    async def waiting(self, tenant: str, app: str, limit: int) -> list[Ticket]:
        if limit <= 0:
            return []
        tag = self._tag(tenant)
        return _tickets.decode(await self._waiting([f"{tag}:queue:{app}"], [tag, int(limit)]))

    @_guarded
    async def queues(self) -> list[tuple[str, str, int]]:
        tenants = await self._tenants()
        results = await self._batch([(self._queues, [f"{self._tag(t)}:queues"], [self._tag(t)]) for t in tenants])
        out = []
        for tenant, flat in zip(tenants, results, strict=True):
            out += [(tenant, _text(flat[i]), int(flat[i + 1])) for i in range(0, len(flat), 2)]
        return out

    @_guarded
    async def finish_ticket(self, ticket_id: str, state: str, reason: str, *,
                            if_unchanged: Ticket | None = None) -> bool:
        try:
            final = TicketState(state)
        except ValueError:
            # As the memory store: an unknown state only fails on a ticket still waiting.
            if await self.position(ticket_id) is not None:
                raise
            return False
        tag = await self._ticket_tag(ticket_id)
        if tag is None:
            return False
        args = [tag, ticket_id, final.value, reason, FINISHED_TICKET_TTL_S]
        if if_unchanged is not None:
            # The lookup may only start to expire once the ticket has surely left WAITING.
            seen, left = if_unchanged.seen_at, if_unchanged.left_at
            args += ["1", "" if seen is None else _num(seen), "" if left is None else _num(left)]
            if not int(await self._finish([f"{tag}:ticket:{ticket_id}"], args)):
                return False
            await self._r.expire(self._tid_key(ticket_id), FINISHED_TICKET_TTL_S)
            return True
        done, _ = await self._batch([
            (self._finish, [f"{tag}:ticket:{ticket_id}"], args),
            _cmd("EXPIRE", self._tid_key(ticket_id), str(FINISHED_TICKET_TTL_S))])
        return bool(int(done))

    # --- records ----------------------------------------------------------------------

    @_guarded
    async def take_records(self, now: float, lease_s: float, limit: int) -> list[Session]:
        tenants = await self._tenants()
        calls: list[_Call] = [(self._take_records, [f"{self._tag(t)}:recq"],
                               [self._tag(t), _num(now), _num(now + lease_s), int(limit)]) for t in tenants]
        out: list[Session] = []
        for raws in await self._batch(calls):
            out += [_session.decode(raw) for raw in raws]
        return out

    @_guarded
    async def ack_records(self, sessions: Sequence[Session]) -> None:
        by_tenant: dict[str, list[str]] = {}
        for s in sessions:
            by_tenant.setdefault(s.tenant, []).append(s.session_id)
        await self._batch([(self._ack_records, [f"{self._tag(t)}:recq"], [self._tag(t), *ids])
                           for t, ids in by_tenant.items()])

    # --- listings ---------------------------------------------------------------------

    @_guarded
    async def hosts(self) -> list[Host]:
        return _hosts.decode(await self._list_hosts([f"{self._g}:hosts"], [self._g]))

    @_guarded
    async def slots(self) -> list[Slot]:
        out: list[Slot] = []
        for vals in await self._batch([_cmd("HVALS", f"{self._tag(t)}:slots") for t in await self._tenants()]):
            out += _slots.decode(b"[" + b",".join(vals) + b"]")
        return out

    @_guarded
    async def sessions(self) -> list[Session]:
        out: list[Session] = []
        for vals in await self._batch([_cmd("HVALS", f"{self._tag(t)}:sessions") for t in await self._tenants()]):
            out += msgspec.json.decode(b"[" + b",".join(vals) + b"]", type=list[Session])
        return out

    async def aclose(self) -> None:
        if self._sending:  # round trips in flight finish (their callers may still wait)
            await asyncio.gather(*self._sending, return_exceptions=True)
        await self._r.aclose()
