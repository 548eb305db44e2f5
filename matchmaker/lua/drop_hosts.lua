-- Forgotten hosts whose tenants have caught up are deleted ({P}).
-- KEYS[1] {P}:dead          dead host id -> its last heartbeat
-- KEYS[2] {P}:dirty         hosts whose tenant copies may lag their record
-- KEYS[3] {P}:hosts         host id -> registration order
-- KEYS[3 + i] {P}:host:<ARGV[i]>   the record of host i
-- ARGV[i] host id i
-- Returns the ids of the hosts deleted.
local out = {}
for i = 1, #ARGV do
  local hk = KEYS[i + 3]
  if redis.call('HGET', hk, 'gone') == '1' and redis.call('SISMEMBER', KEYS[2], ARGV[i]) == 0 then
    redis.call('DEL', hk)
    redis.call('ZREM', KEYS[3], ARGV[i])
    redis.call('ZREM', KEYS[1], ARGV[i])
    out[#out + 1] = ARGV[i]
  end
end
return out
