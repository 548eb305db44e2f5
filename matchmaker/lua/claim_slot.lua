--! include: prelude tenant
-- Claim one given slot for a given session, and serve a ticket with it ({P:T}); the
-- compare-and-set the conformance suite drives directly (RedisStore.claim_slot).
-- KEYS[1..8] as allocate.lua: {P:T}:slots, :hosts, :apps, :gpu, :sessions, :clients,
-- :created, :since:assigned
-- KEYS[9]  {P:T}:queues; KEYS[10] {P:T}:queue:<app>; KEYS[11] {P:T}:qclients:<app>
-- KEYS[12] {P:T}:ticket:<ARGV[3]>    only when ARGV[3] is not ''
-- Undeclared: the placement indexes of the claimed slot (idx() in tenant.lua).
-- ARGV[1] slot id; ARGV[2] Session JSON; ARGV[3] ticket id ('' = none); ARGV[4] TTL
-- Returns 1 when claimed, 0 (changing nothing) when a precondition fails.
local K = {slots = KEYS[1], gpu = KEYS[4], created = KEYS[7], since = {assigned = KEYS[8]}}
local s = cjson.decode(ARGV[2])
local raw = redis.call('HGET', K.slots, ARGV[1])
local slot = raw and cjson.decode(raw)
if not slot or slot.state ~= 'ready' or slot.app ~= s.app then return 0 end
local hc = redis.call('HGET', KEYS[2], slot.host_id)
hc = hc and cjson.decode(hc)
if not hc or hc.d or hc.x then return 0 end
local t
if ARGV[3] ~= '' then
  local tr = redis.call('GET', KEYS[12])
  if not tr then return 0 end
  t = cjson.decode(tr)
  if t.state ~= 'waiting' or t.request.app ~= s.app or truthy(t.left_at) then return 0 end
end
slot.state = 'assigned'; slot.session_id = s.session_id
redis.call('HSET', K.slots, slot.slot_id, enc(slot))
unready(K, slot)
redis.call('HSET', KEYS[5], s.session_id, ARGV[2])
index_session(K, s)
if truthy(s.client_key) then redis.call('HSET', KEYS[6], s.client_key, s.session_id) end
if t then
  t.state = 'served'; t.session_id = s.session_id
  redis.call('SET', KEYS[12], enc(t), 'EX', ARGV[4])
  redis.call('ZREM', KEYS[10], ARGV[3])
  if redis.call('ZCARD', KEYS[10]) == 0 then redis.call('SREM', KEYS[9], s.app) end
  local ck = t.request.client_key
  if truthy(ck) and redis.call('HGET', KEYS[11], ck) == ARGV[3] then redis.call('HDEL', KEYS[11], ck) end
end
return 1
