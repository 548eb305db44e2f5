--! include: prelude tenant
-- The live sessions whose timeout is due, most overdue first, with how long ({P:T}).
-- KEYS[1] {P:T}:sessions; KEYS[2] {P:T}:created; KEYS[3] {P:T}:since:assigned;
-- KEYS[4] {P:T}:since:connected; KEYS[5] {P:T}:since:disconnected
-- ARGV[1] now; ARGV[2] connect timeout; ARGV[3] reconnect grace; ARGV[4] idle timeout;
-- ARGV[5] max session length; ARGV[6] limit. A timeout of 0 is off, except the grace
-- (as in timeouts.due_endings).
-- Returns {seconds overdue, Session JSON, ...}, at most ARGV[6] sessions.
local K = {sessions = KEYS[1], created = KEYS[2],
           since = {assigned = KEYS[3], connected = KEYS[4], disconnected = KEYS[5]}}
local now, limit = tonumber(ARGV[1]), tonumber(ARGV[6])
-- The counts differ only where sessions predate the indexes (an upgrade): rebuild once.
if redis.call('HLEN', K.sessions) ~= redis.call('ZCARD', K.created) then
  for i = 2, 5 do redis.call('DEL', KEYS[i]) end
  for _, raw in ipairs(redis.call('HVALS', K.sessions)) do index_session(K, cjson.decode(raw)) end
end
local late, ids = {}, {}
-- One rule of due_endings per index: due when now - score > timeout, in doubles as
-- Python computes it. The range bound is a hair above now - timeout (rounding); the
-- exact test decides, and as the scores rise the due ones come first.
local function scan(index, timeout)
  local bound = now - timeout + (math.abs(now) + math.abs(timeout)) * 1e-14
  local r = redis.call('ZRANGEBYSCORE', index, '-inf', string.format('%.17g', bound), 'WITHSCORES', 'LIMIT', 0, limit)
  for i = 1, #r, 2 do
    local age = now - tonumber(r[i + 1])
    if not (age > timeout) then break end
    local sid = r[i]
    if late[sid] == nil then ids[#ids + 1] = sid end
    if late[sid] == nil or age - timeout > late[sid] then late[sid] = age - timeout end
  end
end
local connect, grace, idle, max = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
if max ~= 0 then scan(K.created, max) end
if connect ~= 0 then scan(K.since.assigned, connect) end
scan(K.since.disconnected, grace)
if idle ~= 0 then scan(K.since.connected, idle) end
table.sort(ids, function(a, b)
  if late[a] ~= late[b] then return late[a] > late[b] end
  return a < b
end)
local out = {}
for i = 1, math.min(#ids, limit) do
  local raw = redis.call('HGET', K.sessions, ids[i])
  if raw then out[#out + 1] = enc(late[ids[i]]); out[#out + 1] = raw end
end
return out
