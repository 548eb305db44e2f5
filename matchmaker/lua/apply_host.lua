--! include: prelude tenant
-- Apply a version of a host's record to this tenant's copy and slots ({P:T}): create the
-- incarnation's slots, drop an older incarnation's, mark them dead and end their
-- sessions, add or remove them from the placement indexes. Idempotent and monotone.
-- KEYS[1..14] the tenant block (matchmaker/redis_keys.py TenantKeys.block): {P:T}:slots,
-- :hosts, :apps, :live, :gpu, :sessions, :clients, :rec, :recq, :created,
-- :since:assigned, :since:connected, :since:disconnected, :beat
-- KEYS[15] {P:T}:hbseq      host id -> '<incarnation>:<seq>' of the last heartbeat applied
-- KEYS[16] {P:T}:rs:<host>  the host's resetting slots (emptied with the incarnation)
-- KEYS[17] {P:T}:gl:<host>  the host's GPU loads (emptied with the incarnation)
-- KEYS[18] {P:T}:gs:<host>  this tenant's slots of the host by GPU: index -> {app: [slot id]} (rebuilt with it)
-- Undeclared: the placement indexes of each slot changed (idx() in tenant.lua).
-- ARGV[1] host id; ARGV[2] incarnation; ARGV[3] version; ARGV[4] draining '1'|'0';
-- ARGV[5] dead '1'|'0'; ARGV[6] [Slot JSON] of this tenant; ARGV[7] now (ends);
-- ARGV[8] the host's last heartbeat (its deadline, as allocation checks it; never moved back)
-- Returns the Session JSONs ended (HOST_DEAD).
local K = tenant_keys(1)
local host = ARGV[1]
local inc, ver, now = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[7])
local raw = redis.call('HGET', K.hosts, host)
local hc = raw and cjson.decode(raw)
if hc and hc.v >= ver then return {} end
local ended = {}
-- K.live counts each app's slots on live hosts (queue ETAs): +1 when a live host's
-- slot is created, -1 when it is dropped or its host dies.
local function live(app, n)
  if redis.call('HINCRBY', K.live, app, n) <= 0 then redis.call('HDEL', K.live, app) end
end
local function drop(sid, alive)
  local sr = redis.call('HGET', K.slots, sid)
  if not sr then return end
  local slot = cjson.decode(sr)
  if alive then live(slot.app, -1) end
  if truthy(slot.session_id) then
    local e = end_sess(K, slot.session_id, 'host_dead', now)
    if e then ended[#ended + 1] = e end
  end
  unready(K, slot)
  redis.call('HDEL', K.slots, sid)
  if redis.call('HINCRBY', K.apps, slot.app, -1) <= 0 then redis.call('HDEL', K.apps, slot.app) end
end
if hc and hc.i ~= inc then
  for _, sid in ipairs(hc.s) do drop(sid, not hc.x) end
  hc = nil
end
if not hc then
  redis.call('DEL', KEYS[16], KEYS[17], KEYS[18])
  redis.call('HDEL', KEYS[15], host)
  local specs = cjson.decode(ARGV[6])
  if #specs == 0 then
    redis.call('HDEL', K.hosts, host)
    redis.call('HDEL', K.gpu, host)
    redis.call('HDEL', K.beat, host)
    return ended
  end
  hc = {v = ver, i = inc, d = false, x = false, s = {}}
  local on_gpu = {}
  for _, spec in ipairs(specs) do
    drop(spec.slot_id, false)
    redis.call('HSET', K.slots, spec.slot_id, enc(spec))
    redis.call('HINCRBY', K.apps, spec.app, 1)
    live(spec.app, 1)
    hc.s[#hc.s + 1] = spec.slot_id
    if truthy(spec.gpu) then
      local g = tostring(spec.gpu)
      on_gpu[g] = on_gpu[g] or {}
      on_gpu[g][spec.app] = on_gpu[g][spec.app] or {}
      table.insert(on_gpu[g][spec.app], spec.slot_id)
    end
  end
  for g, members in pairs(on_gpu) do redis.call('HSET', KEYS[18], g, enc(members)) end
  if next(on_gpu) ~= nil then redis.call('HSET', KEYS[18], 'r', specs[1].region) end
end
local dead = ARGV[5] == '1'
if dead and not hc.x then
  for _, sid in ipairs(hc.s) do
    local sr = redis.call('HGET', K.slots, sid)
    if sr then
      local slot = cjson.decode(sr)
      live(slot.app, -1)
      if slot.session_id ~= NULL then
        local e = end_sess(K, slot.session_id, 'host_dead', now)
        if e then ended[#ended + 1] = e end
        slot = cjson.decode(redis.call('HGET', K.slots, sid))
      end
      slot.state = 'dead'
      redis.call('HSET', K.slots, sid, enc(slot))
    end
  end
  redis.call('DEL', KEYS[16])
end
hc.x = hc.x or dead
hc.d = ARGV[4] == '1'
hc.v = ver
local beat = tonumber(redis.call('HGET', K.beat, host))
if not beat or tonumber(ARGV[8]) > beat then
  redis.call('HSET', K.beat, host, ARGV[8])
  hc.o = nil  -- a later heartbeat than the one allocation found overdue
end
for _, sid in ipairs(hc.s) do
  local sr = redis.call('HGET', K.slots, sid)
  if sr then sync_ready(K, cjson.decode(sr), hc) end
end
redis.call('HSET', K.hosts, host, enc_copy(hc))
return ended
