-- The length of each listed queue; an empty one leaves the set of non-empty queues ({P:T}).
-- KEYS[1] {P:T}:queues          apps whose queue is not empty
-- KEYS[1 + i] {P:T}:queue:<ARGV[i]>
-- ARGV[i] app i (read from KEYS[1] by the caller)
-- Returns {app, length, ...} of the non-empty ones.
local out = {}
for i = 1, #ARGV do
  local n = redis.call('ZCARD', KEYS[i + 1])
  if n > 0 then out[#out + 1] = ARGV[i]; out[#out + 1] = n else redis.call('SREM', KEYS[1], ARGV[i]) end
end
return out
