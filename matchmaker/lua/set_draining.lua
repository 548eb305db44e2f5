--! include: prelude
-- Drain or undrain a live host ({P}).
-- KEYS[1] {P}:host:<host>   the host's record hash
-- KEYS[2] {P}:dirty         hosts whose tenant copies may lag their record
-- ARGV[1] host id; ARGV[2] '1' drain | '0' undrain
-- Returns {'unknown'} (never registered, or dead) or {'ok', Host JSON}.
local cur = redis.call('HGET', KEYS[1], 'rec')
if not cur then return {'unknown'} end
local h = cjson.decode(cur)
if h.dead then return {'unknown'} end
h.draining = ARGV[2] == '1'
local rec = enc(h)
redis.call('HSET', KEYS[1], 'rec', rec)
redis.call('HINCRBY', KEYS[1], 'ver', 1)
redis.call('SADD', KEYS[2], ARGV[1])
return {'ok', rec}
