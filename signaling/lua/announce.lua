--! include: prelude
-- List (or update) a streamer this connection holds; refused when another holds the id
-- (two nodes claimed it while the directory was unreachable: the first keeps it).
-- KEYS[1]  {P:sig}:dir   KEYS[2] {P:sig}:holders
-- ARGV[1]  address   ARGV[2] streamer id   ARGV[3] streaming ('0'/'1')   ARGV[4] event channel
-- KEYS[3]  {P:sig}:nodes (optional: older nodes pass two keys)
-- ARGV[5]  the connection's credential jti ('' = none)   ARGV[6] its tenant
-- ARGV[7]  '1' if this node may judge other nodes dead (see claim.lua): an id held on a
--          dead node is free, as in a claim
-- Returns 1 when listed, 0 when the id belongs to another connection.
local dir, address, id, streaming, channel = KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local holders, credential, tenant = KEYS[2], ARGV[5], ARGV[6]
local held = owner(redis.call('HGET', dir, id))
if held and held ~= address and not (KEYS[3] and free_if_dead(dir, holders, KEYS[3], channel, id, address, ARGV[7])) then
  return 0
end
redis.call('HSET', dir, id, address .. '|' .. streaming)
set_holder(holders, id, address, credential, tenant)
publish(channel, listed(id, address, streaming, credential, tenant))
return 1
