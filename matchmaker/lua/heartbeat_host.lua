--! include: prelude
-- The host part of a heartbeat ({P}).
-- KEYS[1] {P}:host:<host>   the host's record hash
-- KEYS[2] {P}:hb            live host id -> last heartbeat
-- KEYS[3] {P}:dirty         hosts whose tenant copies may lag their record
-- KEYS[4] {P}:dead          dead host id -> its last heartbeat
-- ARGV[1] host id; ARGV[2] boot id; ARGV[3] now; ARGV[4] NVENC load; ARGV[5] GPU load;
-- ARGV[6] heartbeat TTL ('' = no deadline)
-- Returns {'unknown'} (never registered, or dead), {'conflict'} (another boot),
-- {'expired'} (past its deadline: it died now, as expire_hosts would have marked it; the
-- tenants must apply that), or {'ok', Host JSON, tmap JSON {tenant: [slot id]},
-- incarnation, dirty 0|1}.
local cur = redis.call('HGET', KEYS[1], 'rec')
if not cur then return {'unknown'} end
local h = cjson.decode(cur)
if h.dead then return {'unknown'} end
local now, ttl = tonumber(ARGV[3]), tonumber(ARGV[6])
-- A host past its deadline was dead from that moment on (allocation and the listing said
-- so): a late heartbeat does not bring it back; the agent registers again.
if ttl and now - h.last_heartbeat > ttl then
  h.dead = true
  redis.call('HSET', KEYS[1], 'rec', enc(h))
  redis.call('HINCRBY', KEYS[1], 'ver', 1)
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('SADD', KEYS[3], ARGV[1])
  redis.call('ZADD', KEYS[4], enc(h.last_heartbeat), ARGV[1])
  return {'expired'}
end
if h.boot_id ~= ARGV[2] then return {'conflict'} end
h.last_heartbeat = now; h.nvenc_load = tonumber(ARGV[4]); h.gpu_load = tonumber(ARGV[5])
local rec = enc(h)
redis.call('HSET', KEYS[1], 'rec', rec)
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
local m = redis.call('HMGET', KEYS[1], 'tmap', 'inc')
return {'ok', rec, m[1] or '{}', m[2] or '0', redis.call('SISMEMBER', KEYS[3], ARGV[1])}
