-- The tenants caught up with these host versions ({P}): a host whose version did not
-- move meanwhile leaves the dirty set.
-- KEYS[1] {P}:dirty         hosts whose tenant copies may lag their record
-- KEYS[1 + i] {P}:host:<ARGV[2i - 1]>   the record of host i
-- ARGV[2i - 1] host id i; ARGV[2i] the version of host i that was applied
-- Returns 1.
for i = 1, #ARGV / 2 do
  local hk = KEYS[i + 1]
  if redis.call('HGET', hk, 'ver') == ARGV[2 * i] then
    redis.call('SREM', KEYS[1], ARGV[2 * i - 1])
    redis.call('HDEL', hk, 'old')
  end
end
return 1
