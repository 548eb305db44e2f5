-- Shared helpers. A directory entry is "<address>|<0 or 1>" (address, then whether the
-- streamer is streaming); an address is "<node>/<n>". The credential the holder connected
-- with lives beside it in the holders hash, id -> JSON [address, jti, tenant], so the entry
-- keeps the one format nodes of older releases parse (they take all before the last '|'
-- as the address). A holders entry whose address is not the entry's is stale (an older
-- node changed the entry): readers ignore it.
local function owner(entry)
  return entry and string.match(entry, '^(.*)|') or nil
end

local function node_of(address)
  return string.match(address, '^([^/]*)/')
end

local function publish(channel, event)
  redis.call('SPUBLISH', channel, cjson.encode(event))
end

-- List (or clear, credential '') the holder's credential of an id.
local function set_holder(holders, id, address, credential, tenant)
  if credential == '' then
    redis.call('HDEL', holders, id)
  else
    redis.call('HSET', holders, id, cjson.encode({address, credential, tenant}))
  end
end

-- A listing event; the credential and tenant trail, so older nodes (which read the first
-- four) take it as before.
local function listed(id, address, streaming, credential, tenant)
  if credential == '' then return {'+', id, address, streaming} end
  return {'+', id, address, streaming, credential, tenant}
end

-- Whether the node holding address is dead: its deadline (in the nodes sorted set, Redis's
-- clock) has passed, or it has none. Asked only by a node that may judge (one that has
-- beaten without a gap for a whole TTL, as a reaper must): after Redis comes back from a
-- long outage every deadline is old, and the nodes still alive need a TTL to beat again.
local function dead_node(nodes, address)
  local n = node_of(address)
  if not n then return false end
  local deadline = redis.call('ZSCORE', nodes, n)
  if not deadline then return true end
  local t = redis.call('TIME')
  return tonumber(deadline) < tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Free an id whose holder's node is dead, as its reap would: the entry and its holder go,
-- and the removal is published. Returns true when freed.
local function free_if_dead(dir, holders, nodes, channel, id, address, judge)
  if judge ~= '1' then return false end
  local entry = redis.call('HGET', dir, id)
  local held = owner(entry)
  if not held or node_of(held) == node_of(address) or not dead_node(nodes, held) then return false end
  redis.call('HDEL', dir, id)
  redis.call('HDEL', holders, id)
  publish(channel, {'-', id, held})
  return true
end
