-- The 1-based place of a waiting ticket ({P:T}).
-- KEYS[1] {P:T}:ticket:<id>     the ticket's JSON
-- KEYS[2] {P:T}:queue:<app>     waiting ticket id -> arrival number, of the ticket's app
-- ARGV[1] ticket id
-- Returns the place, or false when it is not waiting.
local raw = redis.call('GET', KEYS[1])
if not raw then return false end
local t = cjson.decode(raw)
if t.state ~= 'waiting' then return false end
local r = redis.call('ZRANK', KEYS[2], ARGV[1])
if not r then return false end
return r + 1
