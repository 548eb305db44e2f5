--! include: prelude
-- A node leaving on purpose (drain): drop it and its directory entries at once, so the
-- others need not wait for its deadline.
-- KEYS[1]  {P:sig}:nodes   KEYS[2] {P:sig}:dir   KEYS[3] {P:sig}:holders
-- KEYS[4]  {P:sig}:counts (optional)
-- ARGV[1]  node id   ARGV[2] the directory's event channel
local nodes, dir, node, channel = KEYS[1], KEYS[2], ARGV[1], ARGV[2]
redis.call('ZREM', nodes, node)
if KEYS[4] then redis.call('HDEL', KEYS[4], node) end
local entries = redis.call('HGETALL', dir)
for i = 1, #entries, 2 do
  local address = owner(entries[i + 1])
  if address and node_of(address) == node then
    redis.call('HDEL', dir, entries[i])
    redis.call('HDEL', KEYS[3], entries[i])
    publish(channel, {'-', entries[i], address})
  end
end
return 1
