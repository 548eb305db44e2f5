--! include: prelude tenant
-- End a live session once ({P:T}): its slot goes RESETTING, its record is queued.
-- KEYS[1..14] the tenant block (matchmaker/redis_keys.py TenantKeys.block): {P:T}:slots,
-- :hosts, :apps, :live, :gpu, :sessions, :clients, :rec, :recq, :created,
-- :since:assigned, :since:connected, :since:disconnected, :beat
-- Undeclared: the placement indexes of the session's slot (idx() in tenant.lua; an
-- ASSIGNED slot is in none, so this only repairs).
-- ARGV[1] session id; ARGV[2] end reason; ARGV[3] now;
-- ARGV[4..6], when ARGV[4] is not '': the state, last_activity and disconnected_at ('' =
-- none) the caller's verdict was based on; end only if the session has not moved on since.
-- Returns the ended Session JSON, or false (unknown, ended, or moved on).
local K = tenant_keys(1)
if ARGV[4] and ARGV[4] ~= '' then
  local raw = redis.call('HGET', K.sessions, ARGV[1])
  if not raw then return false end
  local s = cjson.decode(raw)
  if s.state ~= ARGV[4] or s.last_activity ~= tonumber(ARGV[5]) then return false end
  -- Compare as numbers: tostring() would keep only 14 digits of an epoch time.
  local dis = s.disconnected_at
  local has_dis = dis ~= NULL and dis ~= nil
  if ARGV[6] == '' then
    if has_dis then return false end
  elseif not has_dis or dis ~= tonumber(ARGV[6]) then
    return false
  end
end
return end_sess(K, ARGV[1], ARGV[2], tonumber(ARGV[3]))
