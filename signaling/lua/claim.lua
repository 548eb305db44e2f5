--! include: prelude
-- Commit a streamer id for one connection, unique in the cluster by Epic's rule:
-- "Cam" wanted while "Cam" (or "Cam<N>") is held by another -> "Cam<max N + 1>".
-- KEYS[1]  {P:sig}:dir     hash: streamer id -> entry
-- KEYS[2]  {P:sig}:holders hash: streamer id -> JSON [address, credential jti, tenant]
-- ARGV[1]  the connection's address
-- ARGV[2]  the id it wants
-- ARGV[3]  the id it holds now ('' = none): released if the id changes
-- ARGV[4]  whether it streams ('0' or '1')
-- ARGV[5]  the directory's event channel
-- ARGV[6]  '1': exactly this id or nothing (a streamer credential's id is never renamed)
-- KEYS[3]  {P:sig}:nodes   sorted set: node -> deadline (ms)
-- ARGV[7]  the connection's credential jti ('' = none: open mode)   ARGV[8] its tenant
-- ARGV[9]  '1' if this node may judge other nodes dead (as a reaper: a whole TTL of beats)
-- An id held on a dead node (deadline passed, not yet reaped) is free: a streamer that
-- reconnects to another node after its node was killed keeps its id. The entry is removed
-- (and the removal published) as the reap would.
-- Returns the committed id ('' when an exact claim finds the id held by another).
local dir, address, wanted, old, streaming, channel = KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local holders, nodes, credential, tenant, judge = KEYS[2], KEYS[3], ARGV[7], ARGV[8], ARGV[9]
if ARGV[6] == '1' then
  local holder = owner(redis.call('HGET', dir, wanted))
  if holder and holder ~= address and not free_if_dead(dir, holders, nodes, channel, wanted, address, judge) then
    return ''
  end
end
local top = -1
local entries = redis.call('HGETALL', dir)
for i = 1, #entries, 2 do
  local id = entries[i]
  if owner(entries[i + 1]) ~= address and string.sub(id, 1, #wanted) == wanted then
    local rest = string.sub(id, #wanted + 1)
    local counts = rest == '' or string.match(rest, '^%d+$')
    if counts and free_if_dead(dir, holders, nodes, channel, id, address, judge) then
      counts = false
    end
    if counts and rest == '' then
      if top < 0 then top = 0 end
    elseif counts then
      local n = tonumber(rest)
      if n > top then top = n end
    end
  end
end
local committed = wanted
if top >= 0 then committed = wanted .. tostring(top + 1) end
if old ~= '' and old ~= committed and owner(redis.call('HGET', dir, old)) == address then
  redis.call('HDEL', dir, old)
  redis.call('HDEL', holders, old)
  publish(channel, {'-', old, address})
end
redis.call('HSET', dir, committed, address .. '|' .. streaming)
set_holder(holders, committed, address, credential, tenant)
publish(channel, listed(committed, address, streaming, credential, tenant))
return committed
