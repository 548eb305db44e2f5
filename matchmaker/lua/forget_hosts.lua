-- Hosts dead for longer than the retention start to be forgotten ({P}): each becomes an
-- empty incarnation ('gone'), so the tenants drop its slots when it is applied. A host
-- that came back meanwhile only leaves the dead index.
-- KEYS[1] {P}:dead          dead host id -> its last heartbeat
-- KEYS[2] {P}:dirty         hosts whose tenant copies may lag their record
-- KEYS[2 + i] {P}:host:<ARGV[2 + i]>   the record of candidate i
-- ARGV[1] now; ARGV[2] retention; ARGV[2 + i] candidate host id i (read from KEYS[1] by the caller)
-- Returns the ids of the hosts now being forgotten (now - last heartbeat > retention,
-- in doubles as Python computes it).
local now, keep = tonumber(ARGV[1]), tonumber(ARGV[2])
local out = {}
for i = 3, #ARGV do
  local id, hk = ARGV[i], KEYS[i]
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
