--! include: prelude
-- A node's heartbeat: renew its deadline, and (when it may) reap nodes past theirs.
-- Deadlines are in Redis's clock, so nodes' clocks never need to agree.
-- KEYS[1]  {P:sig}:nodes   sorted set: node -> deadline (ms)
-- KEYS[2]  {P:sig}:epoch   random id written once per Redis data set
-- KEYS[3]  {P:sig}:dir   KEYS[4] {P:sig}:holders
-- KEYS[5]  {P:sig}:counts  hash: node -> JSON counts of its connections (optional: older
--          nodes pass four keys and neither write nor read it)
-- ARGV[1]  node id   ARGV[2] TTL (ms)   ARGV[3] an epoch to write if none
-- ARGV[4]  '1' if this node may reap (it has beaten without a gap for a whole TTL)
-- ARGV[5]  the directory's event channel   ARGV[6] this node's counts (JSON), with KEYS[5]
-- Returns {epoch, 1 if the node was listed before this beat else 0, alive nodes, reaped
-- nodes, counts of the alive nodes as {node, JSON, node, JSON, ...}}.
local nodes, epoch_key, dir = KEYS[1], KEYS[2], KEYS[3]
local node, ttl, fresh_epoch, may_reap, channel = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4], ARGV[5]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local epoch = redis.call('GET', epoch_key)
if not epoch then
  redis.call('SET', epoch_key, fresh_epoch)
  epoch = fresh_epoch
end
local present = redis.call('ZSCORE', nodes, node)
redis.call('ZADD', nodes, now + ttl, node)
local reaped = {}
if may_reap == '1' then
  reaped = redis.call('ZRANGEBYSCORE', nodes, '-inf', '(' .. now)
  if #reaped > 0 then
    local dead = {}
    for _, n in ipairs(reaped) do
      dead[n] = true
      redis.call('ZREM', nodes, n)
    end
    local entries = redis.call('HGETALL', dir)
    for i = 1, #entries, 2 do
      local address = owner(entries[i + 1])
      if address and dead[node_of(address)] then
        redis.call('HDEL', dir, entries[i])
        publish(channel, {'-', entries[i], address})
      end
    end
    -- Holders of ids no longer held at their address: those just reaped, and those an
    -- older node (which knows nothing of this hash) removed or took over.
    local held = redis.call('HGETALL', KEYS[4])
    for i = 1, #held, 2 do
      local ok, holder = pcall(cjson.decode, held[i + 1])
      if not ok or type(holder) ~= 'table' or owner(redis.call('HGET', dir, held[i])) ~= holder[1] then
        redis.call('HDEL', KEYS[4], held[i])
      end
    end
  end
end
local alive = redis.call('ZRANGEBYSCORE', nodes, now, '+inf')
local counted = {}
local counts_key = KEYS[5]
if counts_key then
  redis.call('HSET', counts_key, node, ARGV[6])
  local live = {}
  for _, n in ipairs(alive) do live[n] = true end
  -- Only live nodes' counts are answered; a dead node's are dropped by whoever may reap
  -- (also those of a node an older release removed, which knows nothing of this hash).
  local all = redis.call('HGETALL', counts_key)
  for i = 1, #all, 2 do
    if live[all[i]] then
      counted[#counted + 1] = all[i]
      counted[#counted + 1] = all[i + 1]
    elseif may_reap == '1' then
      redis.call('HDEL', counts_key, all[i])
    end
  end
end
return {epoch, present and 1 or 0, alive, reaped, counted}
