--! include: prelude
-- Register a host, or repeat its registration ({P}: the host registry's hash slot).
-- KEYS[1] {P}:host:<host>   the host's record hash
-- KEYS[2] {P}:hosts         host id -> registration order
-- KEYS[3] {P}:hb            live host id -> last heartbeat
-- KEYS[4] {P}:dirty         hosts whose tenant copies may lag their record
-- KEYS[5] {P}:tenants       every tenant seen
-- KEYS[6] {P}:hseq          registration order counter
-- KEYS[7] {P}:dead          dead host id -> its last heartbeat
-- ARGV[1] host id; ARGV[2] boot id; ARGV[3] now; ARGV[4] Host JSON;
-- ARGV[5] tmap JSON {tenant: [slot id]}; ARGV[6] specs JSON {tenant: [Slot]};
-- ARGV[7] tenants JSON [tenant]; ARGV[8] heartbeat TTL ('' = no deadline)
-- Returns {'conflict'} (alive under another boot), {'same', Host JSON, dirty 0|1, tmap
-- JSON, incarnation} (an idempotent repeat: the tenants' deadlines move as on a
-- heartbeat), or {'new', Host JSON, 1} (a new incarnation: the tenants must apply it).
-- A host past its heartbeat deadline is dead (the rule of expire_hosts) even before a
-- sweep marked it: it comes back as a new incarnation, whatever its boot id.
local cur = redis.call('HGET', KEYS[1], 'rec')
local old, seen = {}, {}
if cur then
  local h = cjson.decode(cur)
  local ttl = tonumber(ARGV[8])
  if not h.dead and not (ttl and tonumber(ARGV[3]) - h.last_heartbeat > ttl) then
    if h.boot_id ~= ARGV[2] then return {'conflict'} end
    h.last_heartbeat = tonumber(ARGV[3])
    local rec = enc(h)
    redis.call('HSET', KEYS[1], 'rec', rec)
    redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
    local m = redis.call('HMGET', KEYS[1], 'tmap', 'inc')
    return {'same', rec, redis.call('SISMEMBER', KEYS[4], ARGV[1]), m[1] or '{}', m[2] or '0'}
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
