--! include: prelude tenant
-- Allocation in one round trip ({P:T}): the client's live session, the FIFO check,
-- placement over the score indexes, and the compare-and-set of the slot (and ticket).
-- KEYS[1]  {P:T}:slots               slot id -> Slot JSON
-- KEYS[2]  {P:T}:hosts               host id -> the tenant's copy of the host
-- KEYS[3]  {P:T}:apps                app -> registered slots (unknown app)
-- KEYS[4]  {P:T}:gpu                 host id -> GPU model (GPU filter)
-- KEYS[5]  {P:T}:sessions            session id -> Session JSON
-- KEYS[6]  {P:T}:clients             client key -> session id
-- KEYS[7]  {P:T}:created             live session id -> created_at
-- KEYS[8]  {P:T}:since:assigned      assigned session id -> last_activity
-- KEYS[9]  {P:T}:queues              apps whose queue is not empty
-- KEYS[10] {P:T}:queue:<app>         waiting ticket id -> arrival number
-- KEYS[11] {P:T}:qclients:<app>      client key -> its waiting ticket id
-- KEYS[12] {P:T}:rz:<app>            claimable slot id -> load percent
-- KEYS[13] {P:T}:fh:<app>            host id -> its claimable slots of the app
-- KEYS[14] {P:T}:rz@<n>:<region>:<app>   the same, the request's region (KEYS[12] if none)
-- KEYS[15] {P:T}:fh@<n>:<region>:<app>   the same, the request's region (KEYS[13] if none)
-- KEYS[16] {P:T}:beat                host id -> its last heartbeat (the deadline check)
-- KEYS[17] {P:T}:ticket:<ARGV[9]>    the ticket served, only when ARGV[9] is not ''
-- Undeclared: the regional indexes of the claimed slot when its region is not the
-- request's (idx() in tenant.lua): placement knows that region only once it has chosen.
-- ARGV[1] session id; ARGV[2] app; ARGV[3] client key ('' = none); ARGV[4] region
-- ('' = any); ARGV[5] GPU model ('' = any); ARGV[6] policy 'spread' | 'pack';
-- ARGV[7] a random number in [0, 1) (ties); ARGV[8] now; ARGV[9] ticket id ('' = none);
-- ARGV[10] finished-ticket TTL in seconds; ARGV[11] the heartbeat TTL ('' = no deadline:
-- only a host the sweep marked dead is dead);
-- ARGV[12] the Session JSON in pieces joined by NUL (never raw in JSON): piece, field,
-- piece, ..., field, piece. Each field is one the session takes from the placed slot
-- (models.SESSION_FROM_SLOT); its JSON value goes between the pieces around it
-- (redis_keys.session_template). One argument, not one per piece: the caller packs
-- every argument of every allocation.
-- Returns {'ok', Session JSON}, {'client', session id} (the client has a live session of
-- this app), {'queued'} (someone waits), {'none'} (no claimable slot), {'unknown'} (no
-- slot serves the app), {'refused'} (the ticket fails its precondition).
local K = {slots = KEYS[1], gpu = KEYS[4], created = KEYS[7], since = {assigned = KEYS[8]}}
local sid, app, ckey = ARGV[1], ARGV[2], ARGV[3]
local K_hosts, K_sess, K_cli, K_queues, K_queue, K_qcli = KEYS[2], KEYS[5], KEYS[6], KEYS[9], KEYS[10], KEYS[11]
local RZ, FH, RZ_REGION, FH_REGION, K_beat = KEYS[12], KEYS[13], KEYS[14], KEYS[15], KEYS[16]
local now, ttl = tonumber(ARGV[8]), tonumber(ARGV[11])
local WINDOW = 32  -- equally ranked candidates compared per step (ties beyond it: lexical)
local function host_of(id) return string.match(id, '^(.*)/') end
local function gpu_ok(host, gpu) return gpu == '' or redis.call('HGET', K.gpu, host) == gpu end
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
local function spread(rz, gpu, rnd)
  local free_of = {}
  return first_best(rz, function(w)
    local ties, best_pct, best_free = {}, nil, nil
    for i = 1, #w, 2 do
      local id, pct = w[i], tonumber(w[i + 1])
      if best_pct and pct > best_pct then break end
      local host = host_of(id)
      local free = free_of[host]
      if free == nil then  -- one lookup per host (false: filtered out by GPU model)
        free = gpu_ok(host, gpu) and (tonumber(redis.call('ZSCORE', FH, host)) or 0)
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
local function pack(fh, gpu, rnd)
  return first_best(fh, function(w)
    local ties, best_free, best_pct = {}, nil, nil
    for i = 1, #w, 2 do
      local host, free = w[i], tonumber(w[i + 1])
      if best_free and free > best_free then break end
      local hc = gpu_ok(host, gpu) and redis.call('HGET', K_hosts, host)
      if hc then
        for _, id in ipairs(cjson.decode(hc).s) do
          local pct = redis.call('ZSCORE', RZ, id)
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
  local id
  if policy == 'pack' then
    if region ~= '' then id = pack(FH_REGION, gpu, rnd) end
    return id or pack(FH, gpu, rnd)
  end
  if region ~= '' then id = spread(RZ_REGION, gpu, rnd) end
  return id or spread(RZ, gpu, rnd)
end
-- Past its heartbeat deadline at `now`, by the rule of expire_hosts and the admin listing
-- (now - last heartbeat > TTL, in the same doubles), whether or not a sweep has seen it yet.
local function overdue(host)
  local beat = ttl and tonumber(redis.call('HGET', K_beat, host))
  return beat ~= nil and now - beat > ttl
end
-- Such a host's slots leave the placement indexes at once (hc.o) and come back with its
-- next heartbeat (heartbeat_slots.lua), or leave for good when its death is applied.
local function take_out(host, raw)
  local hc = cjson.decode(raw)
  hc.o = true
  redis.call('HSET', K_hosts, host, enc_copy(hc))
  for _, id in ipairs(hc.s) do
    local raw = redis.call('HGET', K.slots, id)
    if raw then unready(K, cjson.decode(raw)) end
  end
end

local t, tkey
if ARGV[9] ~= '' then
  tkey = KEYS[17]
  local tr = redis.call('GET', tkey)
  if not tr then return {'refused'} end
  t = cjson.decode(tr)
  if t.state ~= 'waiting' or t.request.app ~= app or truthy(t.left_at) then return {'refused'} end
else
  if ckey ~= '' then
    local cur = redis.call('HGET', K_cli, ckey)
    local raw = cur and redis.call('HGET', K_sess, cur)
    if raw and cjson.decode(raw).app == app then return {'client', cur} end
  end
  if redis.call('ZCARD', K_queue) > 0 then return {'queued'} end  -- FIFO: nobody overtakes
end
-- The indexes hold the claimable slots, except those of a host whose heartbeat deadline
-- passed since its last heartbeat: the placed slot's host is checked here, and a host past
-- it leaves the indexes whole before placement runs again (each round removes at least
-- the placed slot; 256 rounds at most, hosts past their deadline in one tenant at once).
-- A slot that is not claimable otherwise (a bug) is dropped from them the same way, so it
-- can never be given twice.
local slot
local strays, rounds = 0, 0
while strays < 8 and rounds < 256 do
  rounds = rounds + 1
  local id = place(ARGV[4], ARGV[5], ARGV[6], tonumber(ARGV[7]))
  if not id then break end
  local raw = redis.call('HGET', K.slots, id)
  local s = raw and cjson.decode(raw)
  local hraw = s and redis.call('HGET', K_hosts, s.host_id)
  local hc = hraw and copy_flags(hraw)  -- the flags only: the slot list is for take_out
  if s and s.state == 'ready' and s.app == app and hc and not hc.d and not hc.x and not hc.o then
    if not overdue(s.host_id) then slot = s; break end
    take_out(s.host_id, hraw)
    unready(K, s)
  else
    strays = strays + 1
    if s then unready(K, s) else redis.call('ZREM', RZ, id) end
  end
end
if not slot then
  if tonumber(redis.call('HGET', KEYS[3], app) or '0') <= 0 then return {'unknown'} end
  return {'none'}
end
local parts, tpl, pos, is_field = {}, ARGV[12], 1, false
while true do
  local z = string.find(tpl, '\0', pos, true)
  local part = string.sub(tpl, pos, z and z - 1 or -1)
  parts[#parts + 1] = is_field and cjson.encode(slot[part]) or part
  if not z then break end
  is_field, pos = not is_field, z + 1
end
local sess = table.concat(parts)
slot.state = 'assigned'; slot.session_id = sid
redis.call('HSET', K.slots, slot.slot_id, enc(slot))
unready(K, slot)
redis.call('HSET', K_sess, sid, sess)
index_session(K, {session_id = sid, state = 'assigned', created_at = now, last_activity = now})
if ckey ~= '' then redis.call('HSET', K_cli, ckey, sid) end
if t then
  t.state = 'served'; t.session_id = sid
  redis.call('SET', tkey, enc(t), 'EX', ARGV[10])
  redis.call('ZREM', K_queue, ARGV[9])
  if redis.call('ZCARD', K_queue) == 0 then redis.call('SREM', K_queues, app) end
  local ck = t.request.client_key
  if truthy(ck) and redis.call('HGET', K_qcli, ck) == ARGV[9] then redis.call('HDEL', K_qcli, ck) end
end
return {'ok', sess}
