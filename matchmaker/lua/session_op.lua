--! include: prelude tenant
-- Reattach, connect, disconnect or touch a live session ({P:T}).
-- KEYS[1] {P:T}:sessions; KEYS[2] {P:T}:created; KEYS[3] {P:T}:since:assigned;
-- KEYS[4] {P:T}:since:connected; KEYS[5] {P:T}:since:disconnected
-- ARGV[1] 'reattach' | 'connect' | 'disconnect' | 'touch'; ARGV[2] session id; ARGV[3] now
-- Returns the changed Session JSON (1 for touch), or false (unknown, ended, or a
-- disconnect of a session that is not connected).
local K = {sessions = KEYS[1], created = KEYS[2],
           since = {assigned = KEYS[3], connected = KEYS[4], disconnected = KEYS[5]}}
local raw = redis.call('HGET', K.sessions, ARGV[2])
if not raw then return false end
local s = cjson.decode(raw)
if s.state == 'ended' then return false end
local op, now, was = ARGV[1], tonumber(ARGV[3]), s.state
if op == 'reattach' then
  if s.state == 'disconnected' then s.state = 'assigned'; s.disconnected_at = NULL end
  s.last_activity = now
elseif op == 'connect' then
  s.state = 'connected'
  -- Never before it was created (another replica's clock may lag): times stay ordered.
  if s.connected_at == NULL or s.connected_at == 0 then s.connected_at = math.max(now, s.created_at) end
  s.disconnected_at = NULL
  s.last_activity = now
elseif op == 'disconnect' then
  if s.state ~= 'connected' then return false end
  local since = type(s.connected_at) == 'number' and s.connected_at or now
  s.state = 'disconnected'; s.disconnected_at = math.max(now, since)
else
  s.last_activity = now
end
local out = enc(s)
redis.call('HSET', K.sessions, ARGV[2], out)
index_session(K, s, was)
if op == 'touch' then return 1 end
return out
