-- Shared helpers. A directory entry is "<address>|<0 or 1>" (address, then whether the
-- streamer is streaming); an address is "<node>/<n>".
local function owner(entry)
  return entry and string.match(entry, '^(.*)|') or nil
end

local function node_of(address)
  return string.match(address, '^([^/]*)/')
end

local function publish(channel, event)
  redis.call('SPUBLISH', channel, cjson.encode(event))
end
