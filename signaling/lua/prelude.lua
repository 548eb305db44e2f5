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
