-- What the tenants must apply for these hosts ({P}).
-- KEYS[1] {P}:hosts         host id -> registration order
-- KEYS[1 + i] {P}:host:<ARGV[i]>   the record of host i
-- ARGV[i] host id i
-- Returns, per host that has a record: {host id, Host JSON, ver, inc, specs JSON,
-- old tenants JSON, tmap JSON, registration order}.
local out = {}
for i = 1, #ARGV do
  local m = redis.call('HMGET', KEYS[i + 1], 'rec', 'ver', 'inc', 'specs', 'old', 'tmap')
  if m[1] then
    out[#out + 1] = {ARGV[i], m[1], m[2] or '0', m[3] or '0', m[4] or '{}', m[5] or '[]', m[6] or '{}',
                     redis.call('ZSCORE', KEYS[1], ARGV[i]) or '0'}
  end
end
return out
