-- Lease the ended sessions' records due for the sink ({P:T}). A record is due from its
-- end, and again when a lease runs out unacknowledged (its taker died before writing it).
-- KEYS[1] {P:T}:recq            session id -> when its record is due
-- KEYS[2] {P:T}:rec             session id -> ended Session JSON
-- ARGV[1] now; ARGV[2] lease end; ARGV[3] limit
-- Returns the leased Session JSONs.
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
local out = {}
for _, id in ipairs(ids) do
  local rec = redis.call('HGET', KEYS[2], id)
  if rec then
    redis.call('ZADD', KEYS[1], ARGV[2], id)
    out[#out + 1] = rec
  else
    redis.call('ZREM', KEYS[1], id)
  end
end
return out
