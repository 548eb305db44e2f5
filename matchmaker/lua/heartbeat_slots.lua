--! include: prelude tenant
-- The slot part of a heartbeat, for one tenant ({P:T}); applied only while the tenant's
-- copy of the host is of the same, live incarnation. Every heartbeat runs it for every
-- tenant of the host (with no reports if need be): it moves the host's heartbeat deadline
-- that allocation checks (KEYS[14]), and puts back the slots allocation took out of the
-- indexes when it found the host past that deadline (hc.o).
-- KEYS[1..14] the tenant block (matchmaker/redis_keys.py TenantKeys.block): {P:T}:slots,
-- :hosts, :apps, :live, :gpu, :sessions, :clients, :rec, :recq, :created,
-- :since:assigned, :since:connected, :since:disconnected, :beat
-- Undeclared: the placement indexes of each slot changed (idx() in tenant.lua).
-- ARGV[1] host id; ARGV[2] incarnation; ARGV[3] now;
-- ARGV[4] [[position, slot id, state, NVENC load, GPU load, reset_for], ...]
-- Returns {0} (not this incarnation, or dead: nothing changed) or {1, {position, ended
-- Session JSON, ...} (SLOT_FAILED), {slot id, session to reset after, ...}}.
local K = tenant_keys(1)
local host, now = ARGV[1], tonumber(ARGV[3])
local raw = redis.call('HGET', K.hosts, host)
if not raw then return {0} end
local hc = cjson.decode(raw)
if hc.i ~= tonumber(ARGV[2]) or hc.x then return {0} end
redis.call('HSET', K.beat, host, ARGV[3])
local back = hc.o
if back then
  hc.o = nil
  redis.call('HSET', K.hosts, host, enc(hc))
end
local ended, resets = {}, {}
for _, r in ipairs(cjson.decode(ARGV[4])) do
  local sid, st, rf = r[2], r[3], r[6]
  local sr = redis.call('HGET', K.slots, sid)
  if sr then
    local slot = cjson.decode(sr)
    slot.nvenc_load = r[4]; slot.gpu_load = r[5]
    if slot.state == 'assigned' then
      if (st == 'dead' or st == 'starting') and truthy(slot.session_id) then
        redis.call('HSET', K.slots, sid, enc(slot))
        local e = end_sess(K, slot.session_id, 'slot_failed', now)
        if e then ended[#ended + 1] = tostring(r[1]); ended[#ended + 1] = e end
        slot = cjson.decode(redis.call('HGET', K.slots, sid))
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
    redis.call('HSET', K.slots, sid, enc(slot))
    sync_ready(K, slot, hc)
  end
end
for _, sid in ipairs(hc.s) do
  local sr = redis.call('HGET', K.slots, sid)
  if sr then
    local slot = cjson.decode(sr)
    if back then sync_ready(K, slot, hc) end
    if slot.state == 'resetting' and truthy(slot.ended_session) then
      resets[#resets + 1] = sid; resets[#resets + 1] = slot.ended_session
    end
  end
end
return {1, ended, resets}
