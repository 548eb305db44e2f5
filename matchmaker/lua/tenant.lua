-- Shared by the scripts that change a tenant's slots and sessions (included after
-- prelude.lua). K is the script's table of declared keys, built from KEYS by
-- tenant_keys(): every key these helpers touch is in it, except the placement indexes
-- of a slot whose app and region only its stored record names (see idx()).
local function tenant_keys(first)
  return {slots = KEYS[first], hosts = KEYS[first + 1], apps = KEYS[first + 2], live = KEYS[first + 3],
          gpu = KEYS[first + 4], sessions = KEYS[first + 5], clients = KEYS[first + 6], rec = KEYS[first + 7],
          recq = KEYS[first + 8], created = KEYS[first + 9],
          since = {assigned = KEYS[first + 10], connected = KEYS[first + 11], disconnected = KEYS[first + 12]},
          beat = KEYS[first + 13]}
end
-- The deadline indexes (due_sessions): a live session is in K.created (created_at) and in
-- the since set of its state (what that state's timeout counts from). Scores are exact.
local SINCE = {assigned = 'last_activity', connected = 'last_activity', disconnected = 'disconnected_at'}
local function index_session(K, s, was)  -- was: the state before the change; nil for new
  local sid = s.session_id
  if was == nil then
    redis.call('ZADD', K.created, enc(s.created_at), sid)
  elseif was ~= s.state and SINCE[was] then
    redis.call('ZREM', K.since[was], sid)
  end
  local at = SINCE[s.state] and s[SINCE[s.state]]
  if type(at) == 'number' then redis.call('ZADD', K.since[s.state], enc(at), sid) end
end
local function unindex_session(K, s)
  if SINCE[s.state] then redis.call('ZREM', K.since[s.state], s.session_id) end
  redis.call('ZREM', K.created, s.session_id)
end
-- The placement index of one app's claimable slots (region nil: all regions; the region
-- is length-prefixed so that no (region, app) pair names another's key). The one key
-- name built here: a slot's app and region are known only from its stored record. It
-- shares K.slots' hash tag (Cluster-safe); matchmaker/redis_keys.py builds the same name.
local function idx(K, kind, app, region)
  local tag = string.match(K.slots, '^{[^}]*}')
  if region == nil then return tag .. ':' .. kind .. ':' .. app end
  return tag .. ':' .. kind .. '@' .. #region .. ':' .. region .. ':' .. app
end
-- A host's resetting slots of this tenant (slot id -> the session ended there): what a
-- heartbeat's reply lists without reading the host's other slots. Named from the slot's
-- host (end_sess); TenantKeys.resets builds the same name.
local function resets_key(K, host)
  return string.match(K.slots, '^{[^}]*}') .. ':rs:' .. host
end
-- A host's GPU loads (GPU index -> 'nvenc,gpu'), written by heartbeats' GPU reports;
-- TenantKeys.gpu_loads builds the same name.
local function gpu_loads_key(K, host)
  return string.match(K.slots, '^{[^}]*}') .. ':gl:' .. host
end
-- Whole percent of the higher of NVENC and GPU load: what placement compares.
local function pct_of(nvenc, gpu)
  return math.floor(math.max(tonumber(nvenc) or 0, tonumber(gpu) or 0) * 100 + 0.5)
end
-- A slot's load: its GPU's last report when it was registered on a GPU, else its own.
local function load_pct(K, slot)
  if truthy(slot.gpu) then
    local v = redis.call('HGET', gpu_loads_key(K, slot.host_id), tostring(slot.gpu))
    if not v then return 0 end
    local n, g = string.match(v, '^([^,]*),(.*)$')
    return pct_of(n, g)
  end
  return pct_of(slot.nvenc_load, slot.gpu_load)
end
local function index_ready(K, slot)
  local pct = load_pct(K, slot)
  local added = redis.call('ZADD', idx(K, 'rz', slot.app), pct, slot.slot_id)
  redis.call('ZADD', idx(K, 'rz', slot.app, slot.region), pct, slot.slot_id)
  if added == 1 then
    redis.call('ZINCRBY', idx(K, 'fh', slot.app), 1, slot.host_id)
    redis.call('ZINCRBY', idx(K, 'fh', slot.app, slot.region), 1, slot.host_id)
    redis.call('HSET', K.gpu, slot.host_id, slot.gpu_model)
  end
end
-- The slot leaves the placement indexes (whatever it was before).
local function unready(K, slot)
  if redis.call('ZREM', idx(K, 'rz', slot.app), slot.slot_id) == 1 then
    redis.call('ZREM', idx(K, 'rz', slot.app, slot.region), slot.slot_id)
    for _, k in ipairs({idx(K, 'fh', slot.app), idx(K, 'fh', slot.app, slot.region)}) do
      if tonumber(redis.call('ZINCRBY', k, -1, slot.host_id)) <= 0 then redis.call('ZREM', k, slot.host_id) end
    end
  end
end
-- A tenant's copy of a host: {v, i, d, x[, o], s}, written by enc_copy() alone, flags first
-- and the slot list s last, so that copy_flags() reads the flags at the head without
-- touching the list, which is most of it (500 ids on a big host) and is needed only to put
-- the slots back. A copy of another layout (written before) decodes whole.
local function enc_copy(hc)
  return '{"v":' .. enc(hc.v) .. ',"i":' .. enc(hc.i) .. ',"d":' .. enc(hc.d == true) .. ',"x":' .. enc(hc.x == true)
    .. (hc.o and ',"o":true' or '') .. ',"s":' .. enc(hc.s) .. '}'
end
local function copy_flags(raw)
  local i, d, x, at = string.match(raw, '^{"v":[^,]*,"i":(%d+),"d":(%a+),"x":(%a+),()')
  if i then
    return {i = tonumber(i), d = d == 'true', x = x == 'true', o = string.sub(raw, at, at + 8) == '"o":true,'}
  end
  return cjson.decode(raw)
end
-- Every script that writes a slot calls this: the indexes hold exactly the claimable
-- slots (READY on a live, non-draining host; hc is the tenant's copy of the host; hc.o:
-- allocation took the host's slots out when it found it past its heartbeat deadline,
-- until its next heartbeat, see allocate.lua).
local function sync_ready(K, slot, hc)
  if slot.state == 'ready' and hc and not hc.d and not hc.x and not hc.o then
    index_ready(K, slot)
  else
    unready(K, slot)
  end
end
-- End a live session once: delete it, drop its client index, slot ASSIGNED -> RESETTING.
local function end_sess(K, sid, reason, now)
  local raw = redis.call('HGET', K.sessions, sid)
  if not raw then return nil end
  local s = cjson.decode(raw)
  if s.state == 'ended' then return nil end
  unindex_session(K, s)
  -- Its times stay ordered whatever clock ended it (the sweep of one replica may read its
  -- clock before another replica created or connected the session): created_at <=
  -- connected_at (<= disconnected_at) <= ended_at.
  for _, f in ipairs({'created_at', 'connected_at', 'disconnected_at'}) do
    local at = s[f]
    if type(at) == 'number' and at > now then now = at end
  end
  s.state = 'ended'; s.ended_at = now; s.end_reason = reason
  redis.call('HDEL', K.sessions, sid)
  if truthy(s.client_key) and redis.call('HGET', K.clients, s.client_key) == sid then
    redis.call('HDEL', K.clients, s.client_key)
  end
  local sr = redis.call('HGET', K.slots, s.slot_id)
  if sr then
    local slot = cjson.decode(sr)
    if slot.session_id == sid then
      slot.session_id = NULL
      if slot.state == 'assigned' then
        slot.state = 'resetting'; slot.ended_session = sid
        redis.call('HSET', resets_key(K, slot.host_id), s.slot_id, sid)
      end
      redis.call('HSET', K.slots, s.slot_id, enc(slot))
      unready(K, slot)
    end
  end
  local out = enc(s)
  -- The record waits here until a replica has written it to the sink (take/ack_records).
  redis.call('HSET', K.rec, sid, out)
  redis.call('ZADD', K.recq, now, sid)
  -- Why it ended, for a late event's 410 (store.ENDED_REASON_TTL_S; TenantKeys.ended names it).
  redis.call('SET', K.sessions .. ':ended:' .. sid, reason, 'EX', 300)
  return out
end
