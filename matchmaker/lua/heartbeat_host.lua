--! include: prelude
-- The host part of a heartbeat ({P}).
-- KEYS[1] {P}:host:<host>   the host's record hash
-- KEYS[2] {P}:hb            live host id -> last heartbeat
-- KEYS[3] {P}:dirty         hosts whose tenant copies may lag their record
-- KEYS[4] {P}:dead          dead host id -> its last heartbeat
-- KEYS[5] {P}:hosts         host id -> registration order (new when a forgotten host returns)
-- ARGV[1] host id; ARGV[2] boot id; ARGV[3] now; ARGV[4] NVENC load; ARGV[5] GPU load;
-- ARGV[6] heartbeat TTL ('' = no deadline); ARGV[7] the mark of the incarnation whose
-- slot map the caller already holds ('' = none)
-- Returns {'unknown'} (never registered, or dead), {'conflict'} (another boot),
-- {'expired'} (past its deadline: it died now, as expire_hosts would have marked it; the
-- tenants must apply that), or {'ok', draining 0|1, incarnation, dirty 0|1, tmap JSON
-- {tenant: [slot id]}, Host JSON, mark}, tmap and Host '' when the caller holds that
-- incarnation's map already (they do not change within an incarnation). The mark,
-- '<registration order>:<incarnation>', is never reused: the incarnation counter starts
-- again when a forgotten host's record is deleted, its registration order does not.
local cur = redis.call('HGET', KEYS[1], 'rec')
if not cur then return {'unknown'} end
-- Decode only the record's head: its slot_ids, last as the store encodes it (models.Host),
-- are most of it and this script never reads them. The list is last when the first ']'
-- after it closes the record: plain finds (memchr), never a pattern run over the list.
-- Anything else decodes whole.
local h, head, tail
do
  local cut = string.find(cur, ',"slot_ids":[', 1, true)
  if cut and string.find(cur, ']', cut, true) == #cur - 1 and string.byte(cur, #cur) == 125 then  -- '}'
    head, tail = string.sub(cur, 1, cut - 1), string.sub(cur, cut)
    h = cjson.decode(head .. '}')
  else
    h = cjson.decode(cur)
  end
end
if h.dead then return {'unknown'} end
local now, ttl = tonumber(ARGV[3]), tonumber(ARGV[6])
-- A host past its deadline was dead from that moment on (allocation and the listing said
-- so): a late heartbeat does not bring it back; the agent registers again.
if ttl and now - h.last_heartbeat > ttl then
  h = cjson.decode(cur)
  h.dead = true
  redis.call('HSET', KEYS[1], 'rec', enc(h))
  redis.call('HINCRBY', KEYS[1], 'ver', 1)
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('SADD', KEYS[3], ARGV[1])
  redis.call('ZADD', KEYS[4], enc(h.last_heartbeat), ARGV[1])
  return {'expired'}
end
if h.boot_id ~= ARGV[2] then return {'conflict'} end
h.last_heartbeat = now; h.nvenc_load = tonumber(ARGV[4]); h.gpu_load = tonumber(ARGV[5])
-- Only three numbers change: write them into the record's JSON in place rather than
-- encode it again (its slot_ids make that the bulk of a small heartbeat's cost), in the
-- head alone where there is one (gsub copies what follows a match a byte at a time). A
-- key can only match unescaped, where the record has it; anything unexpected encodes anew.
local rec = head or cur
for _, f in ipairs({'last_heartbeat', 'nvenc_load', 'gpu_load'}) do
  local n
  rec, n = string.gsub(rec, '"' .. f .. '":[-+%d%.eE]+', '"' .. f .. '":' .. enc(h[f]), 1)
  if n ~= 1 then
    local whole = cjson.decode(cur)
    whole.last_heartbeat, whole.nvenc_load, whole.gpu_load = h.last_heartbeat, h.nvenc_load, h.gpu_load
    rec, tail = enc(whole), nil
    break
  end
end
if tail then rec = rec .. tail end
redis.call('HSET', KEYS[1], 'rec', rec)
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
local inc = redis.call('HGET', KEYS[1], 'inc') or '0'
local dirty = redis.call('SISMEMBER', KEYS[3], ARGV[1])
local draining = h.draining and 1 or 0
local mark = (redis.call('ZSCORE', KEYS[5], ARGV[1]) or '') .. ':' .. inc
if mark == ARGV[7] then return {'ok', draining, inc, dirty, '', '', mark} end
return {'ok', draining, inc, dirty, redis.call('HGET', KEYS[1], 'tmap') or '{}', rec, mark}
