-- The client's live session ({P:T}).
-- KEYS[1] {P:T}:clients         client key -> session id
-- KEYS[2] {P:T}:sessions        session id -> Session JSON
-- ARGV[1] client key
-- Returns the Session JSON, or false.
local sid = redis.call('HGET', KEYS[1], ARGV[1])
if not sid then return false end
return redis.call('HGET', KEYS[2], sid)
