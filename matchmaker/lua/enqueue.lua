--! include: prelude
-- Append a ticket to its queue, or give its client's waiting ticket back, heard and no
-- longer left ({P:T}).
-- KEYS[1] {P:T}:queue:<app>     waiting ticket id -> arrival number
-- KEYS[2] {P:T}:ticket:<id>     the new ticket's JSON
-- KEYS[3] {P:T}:qseq            arrival counter
-- KEYS[4] {P:T}:queues          apps whose queue is not empty
-- KEYS[5] {P:T}:qclients:<app>  client key -> its waiting ticket id
-- Undeclared: {P:T}:ticket:<id> of the client's waiting ticket, whose id only KEYS[5]
-- holds (same hash tag).
-- ARGV[1] ticket id; ARGV[2] Ticket JSON; ARGV[3] max length; ARGV[4] app;
-- ARGV[5] client key ('' = none); ARGV[6] now
-- Returns {1-based place or -1 (full), whether KEYS[2] exists, the rejoined Ticket JSON or ''}.
local tag = string.match(KEYS[1], '^{[^}]*}')
if ARGV[5] ~= '' then
  local mine = redis.call('HGET', KEYS[5], ARGV[5])
  local mkey = mine and tag .. ':ticket:' .. mine
  local raw = mkey and redis.call('GET', mkey)
  if raw then
    local t = cjson.decode(raw)
    local r = redis.call('ZRANK', KEYS[1], mine)
    if t.state == 'waiting' and r then
      t.seen_at = tonumber(ARGV[6]); t.left_at = NULL
      local out = enc(t)
      redis.call('SET', mkey, out)
      return {r + 1, 0, out}
    end
  end
end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
  return {-1, redis.call('EXISTS', KEYS[2]), ''}
end
redis.call('SET', KEYS[2], ARGV[2])
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  redis.call('ZADD', KEYS[1], redis.call('INCR', KEYS[3]), ARGV[1])
end
redis.call('SADD', KEYS[4], ARGV[4])
if ARGV[5] ~= '' then redis.call('HSET', KEYS[5], ARGV[5], ARGV[1]) end
return {redis.call('ZCARD', KEYS[1]), 1, ''}
