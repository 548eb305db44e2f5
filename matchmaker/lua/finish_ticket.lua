--! include: prelude
-- A waiting ticket leaves WAITING, once ({P:T}).
-- KEYS[1] {P:T}:ticket:<id>     the ticket's JSON
-- KEYS[2] {P:T}:queue:<app>     waiting ticket id -> arrival number, of the ticket's app
-- KEYS[3] {P:T}:queues          apps whose queue is not empty
-- KEYS[4] {P:T}:qclients:<app>  client key -> its waiting ticket id, of the ticket's app
-- ARGV[1] ticket id; ARGV[2] the new state; ARGV[3] reason; ARGV[4] TTL in seconds;
-- ARGV[5] '1' when ARGV[6] and ARGV[7] are the seen_at and left_at ('' = none) the
-- verdict was based on (finish only if they are unchanged)
-- Returns 1, or 0 when the ticket is not waiting (or changed).
local raw = redis.call('GET', KEYS[1])
if not raw then return 0 end
local t = cjson.decode(raw)
if t.state ~= 'waiting' then return 0 end
if ARGV[5] == '1' then
  -- Compare as numbers: tostring() would keep only 14 digits of an epoch time.
  local function same(v, arg)
    local has = v ~= nil and v ~= NULL
    if arg == '' then return not has end
    return has and v == tonumber(arg)
  end
  if not same(t.seen_at, ARGV[6]) or not same(t.left_at, ARGV[7]) then return 0 end
end
t.state = ARGV[2]; t.reason = ARGV[3]
redis.call('SET', KEYS[1], enc(t), 'EX', ARGV[4])
redis.call('ZREM', KEYS[2], ARGV[1])
if redis.call('ZCARD', KEYS[2]) == 0 then redis.call('SREM', KEYS[3], t.request.app) end
local ck = t.request.client_key
if truthy(ck) and redis.call('HGET', KEYS[4], ck) == ARGV[1] then redis.call('HDEL', KEYS[4], ck) end
return 1
