--! include: prelude
-- Remove a streamer from the directory, if this connection still holds its id.
-- KEYS[1]  {P:sig}:dir   KEYS[2] {P:sig}:holders
-- ARGV[1]  address   ARGV[2] streamer id   ARGV[3] event channel
-- Returns 1 when removed.
local dir, address, id, channel = KEYS[1], ARGV[1], ARGV[2], ARGV[3]
if owner(redis.call('HGET', dir, id)) ~= address then return 0 end
redis.call('HDEL', dir, id)
redis.call('HDEL', KEYS[2], id)
publish(channel, {'-', id, address})
return 1
