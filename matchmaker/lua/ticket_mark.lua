--! include: prelude
-- A waiting ticket's client was heard, or hung up its event stream ({P:T}).
-- KEYS[1] {P:T}:ticket:<id>     the ticket's JSON
-- ARGV[1] 'heard' | 'left'; ARGV[2] now
-- Returns 1, or 0 when the ticket is not waiting.
local raw = redis.call('GET', KEYS[1])
if not raw then return 0 end
local t = cjson.decode(raw)
if t.state ~= 'waiting' then return 0 end
if ARGV[1] == 'heard' then
  t.seen_at = tonumber(ARGV[2]); t.left_at = NULL
elseif truthy(t.left_at) then
  return 1
else
  t.left_at = tonumber(ARGV[2])
end
redis.call('SET', KEYS[1], enc(t))
return 1
