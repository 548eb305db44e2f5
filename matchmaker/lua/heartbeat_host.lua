--! include: prelude
-- The host part of a heartbeat ({P}).
-- KEYS[1] {P}:host:<host>   the host's record hash
-- KEYS[2] {P}:hb            live host id -> last heartbeat
-- KEYS[3] {P}:dirty         hosts whose tenant copies may lag their record
-- ARGV[1] host id; ARGV[2] boot id; ARGV[3] now; ARGV[4] NVENC load; ARGV[5] GPU load
-- Returns {'unknown'} (never registered, or dead), {'conflict'} (another boot), or
-- {'ok', Host JSON, tmap JSON {tenant: [slot id]}, incarnation, dirty 0|1}.
local cur = redis.call('HGET', KEYS[1], 'rec')
if not cur then return {'unknown'} end
local h = cjson.decode(cur)
if h.dead then return {'unknown'} end
if h.boot_id ~= ARGV[2] then return {'conflict'} end
h.last_heartbeat = tonumber(ARGV[3]); h.nvenc_load = tonumber(ARGV[4]); h.gpu_load = tonumber(ARGV[5])
local rec = enc(h)
redis.call('HSET', KEYS[1], 'rec', rec)
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
local m = redis.call('HMGET', KEYS[1], 'tmap', 'inc')
return {'ok', rec, m[1] or '{}', m[2] or '0', redis.call('SISMEMBER', KEYS[3], ARGV[1])}
