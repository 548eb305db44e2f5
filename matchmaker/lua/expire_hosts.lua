--! include: prelude
-- Mark silent hosts dead; return every dirty host and the outbox ({P}).
-- KEYS[1] {P}:hb            live host id -> last heartbeat
-- KEYS[2] {P}:dirty         hosts whose tenant copies may lag their record
-- KEYS[3] {P}:outbox        ended sessions no caller could return (JSON)
-- KEYS[4] {P}:dead          dead host id -> its last heartbeat
-- KEYS[4 + i] {P}:host:<ARGV[2 + i]>   the record of candidate i
-- ARGV[1] now; ARGV[2] ttl; ARGV[2 + i] candidate host id i (read from KEYS[1] by the caller)
-- Returns {dirty host ids, outbox Session JSONs} (the outbox is emptied).
local now, ttl = tonumber(ARGV[1]), tonumber(ARGV[2])
for i = 3, #ARGV do
  local id, hk = ARGV[i], KEYS[i + 2]
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
