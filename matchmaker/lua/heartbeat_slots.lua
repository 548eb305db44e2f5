--! include: prelude tenant
-- The slot part of a heartbeat, for one tenant ({P:T}); applied only while the tenant's
-- copy of the host is of the same, live incarnation. Every heartbeat runs it for every
-- tenant of the host (with no reports if need be): it moves the host's heartbeat deadline
-- that allocation checks (KEYS[14]), and puts back the slots allocation took out of the
-- indexes when it found the host past that deadline (hc.o), whether or not its reports
-- apply.
-- The reports apply when the heartbeat is in sequence (docs/matchmaker-api.md): a full
-- one whose seq is 0 (an agent without deltas) or above the last applied one, a delta
-- whose seq is exactly the last applied one + 1 of this incarnation. Otherwise nothing
-- of them applies and the caller asks the agent for a full heartbeat. Only the slots
-- reported are decoded and written, so a delta costs what changed.
-- KEYS[1..14] the tenant block (matchmaker/redis_keys.py TenantKeys.block): {P:T}:slots,
-- :hosts, :apps, :live, :gpu, :sessions, :clients, :rec, :recq, :created,
-- :since:assigned, :since:connected, :since:disconnected, :beat
-- KEYS[15] {P:T}:hbseq      host id -> '<incarnation>:<seq>' of the last heartbeat applied
-- KEYS[16] {P:T}:rs:<host>  the host's resetting slots: slot id -> the ended session
-- KEYS[17] {P:T}:gl:<host>  the host's GPU loads: GPU index -> 'nvenc,gpu'
-- KEYS[18] {P:T}:gs:<host>  this tenant's slots of the host by GPU: index -> {app: [slot id]}
-- Undeclared: the placement indexes of each slot changed (idx() in tenant.lua).
-- ARGV[1] host id; ARGV[2] incarnation; ARGV[3] now;
-- ARGV[4] [[position, slot id, state, NVENC load, GPU load, reset_for], ...];
-- ARGV[5] seq (0: not numbered); ARGV[6] full '1'|'0';
-- ARGV[7] [[GPU index, NVENC load, GPU load], ...]: a GPU report moves the placement
-- score of each claimable slot on that GPU (one ZADD XX per index), without reading or
-- writing the slots; a slot on a GPU ignores its own report's loads.
-- A slot reported 'draining' (the agent wants it out of placement to restart its
-- streamer) becomes DRAINING, out of the indexes, unless a session holds it: an ASSIGNED
-- one stays so, and its position is returned in busy. A DRAINING one reported 'ready' is
-- READY again.
-- Returns {0} (not this incarnation, or dead: nothing changed) or {1, {position, ended
-- Session JSON, ...} (SLOT_FAILED), {slot id, session to reset after, ...}, applied 1|0,
-- {position, ...} (busy)}.
local K = tenant_keys(1)
local K_seq, K_rs, K_gl, K_gs = KEYS[15], KEYS[16], KEYS[17], KEYS[18]
local host, now = ARGV[1], tonumber(ARGV[3])
local raw = redis.call('HGET', K.hosts, host)
if not raw then return {0} end
local hc = copy_flags(raw)  -- the flags; the slot list is decoded only to put slots back
if hc.i ~= tonumber(ARGV[2]) or hc.x then return {0} end
redis.call('HSET', K.beat, host, ARGV[3])
local back = hc.o
if back then
  hc = cjson.decode(raw)
  hc.o = nil
  redis.call('HSET', K.hosts, host, enc_copy(hc))
end
local seq, full = tonumber(ARGV[5]), ARGV[6] == '1'
local last
local mark = redis.call('HGET', K_seq, host)
if mark then
  local i, q = string.match(mark, '^(%d+):(%d+)$')
  if tonumber(i) == hc.i then last = tonumber(q) end
end
local applies
if full then
  applies = seq == 0 or last == nil or seq > last
else
  applies = last ~= nil and seq == last + 1
end
local ended, resets, busy = {}, {}, {}
if applies then
  if seq > 0 then
    redis.call('HSET', K_seq, host, string.format('%d:%d', hc.i, seq))
  else
    redis.call('HDEL', K_seq, host)
  end
  local region
  for _, gr in ipairs(cjson.decode(ARGV[7])) do
    local g = tostring(gr[1])
    redis.call('HSET', K_gl, g, enc(gr[2]) .. ',' .. enc(gr[3]))
    local members = redis.call('HGET', K_gs, g)
    if members then
      region = region or redis.call('HGET', K_gs, 'r')
      local pct = pct_of(gr[2], gr[3])
      for app, sids in pairs(cjson.decode(members)) do  -- one ZADD per index for all of them
        local args = {}
        for _, sid in ipairs(sids) do args[#args + 1] = pct; args[#args + 1] = sid end
        redis.call('ZADD', idx(K, 'rz', app), 'XX', unpack(args))
        redis.call('ZADD', idx(K, 'rz', app, region), 'XX', unpack(args))
      end
    end
  end
  for _, r in ipairs(cjson.decode(ARGV[4])) do
    local sid, st, rf = r[2], r[3], r[6]
    local sr = redis.call('HGET', K.slots, sid)
    if sr then
      local slot = cjson.decode(sr)
      local was_state, was_ended, was_n, was_g = slot.state, slot.ended_session, slot.nvenc_load, slot.gpu_load
      if not truthy(slot.gpu) then slot.nvenc_load = r[4]; slot.gpu_load = r[5] end
      if slot.state == 'assigned' then
        if (st == 'dead' or st == 'starting') and truthy(slot.session_id) then
          redis.call('HSET', K.slots, sid, enc(slot))
          local e = end_sess(K, slot.session_id, 'slot_failed', now)
          if e then ended[#ended + 1] = tostring(r[1]); ended[#ended + 1] = e end
          slot = cjson.decode(redis.call('HGET', K.slots, sid))
          slot.state = st; slot.ended_session = NULL
        elseif st == 'draining' then
          busy[#busy + 1] = r[1]
        end
      elseif slot.state == 'resetting' then
        if st == 'ready' and rf == slot.ended_session then
          slot.state = 'ready'; slot.ended_session = NULL
        elseif st == 'dead' then
          slot.state = 'dead'; slot.ended_session = NULL
        elseif full and truthy(slot.ended_session) then
          -- A slot that went resetting before K_rs existed is listed from its first full beat.
          redis.call('HSET', K_rs, sid, slot.ended_session)
        end
      elseif st == 'ready' or st == 'starting' or st == 'dead' or st == 'draining' then
        slot.state = st
      end
      -- A report that changes nothing (most of a full heartbeat) writes nothing: the
      -- indexes already agree with the slot (every script that changes one keeps them).
      if slot.state ~= was_state or slot.ended_session ~= was_ended or slot.nvenc_load ~= was_n
          or slot.gpu_load ~= was_g then
        redis.call('HSET', K.slots, sid, enc(slot))
        sync_ready(K, slot, hc)
      end
    end
  end
end
if back then
  for _, sid in ipairs(hc.s) do
    local sr = redis.call('HGET', K.slots, sid)
    if sr then sync_ready(K, cjson.decode(sr), hc) end
  end
end
-- The slots to reset: K_rs, each entry checked against its slot (a stale one goes).
local rs = redis.call('HGETALL', K_rs)
for n = 1, #rs, 2 do
  local sid, sess = rs[n], rs[n + 1]
  local sr = redis.call('HGET', K.slots, sid)
  local slot = sr and cjson.decode(sr)
  if slot and slot.state == 'resetting' and slot.ended_session == sess then
    resets[#resets + 1] = sid; resets[#resets + 1] = sess
  else
    redis.call('HDEL', K_rs, sid)
  end
end
return {1, ended, resets, applies and 1 or 0, busy}
