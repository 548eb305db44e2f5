-- The whole directory and its holders in one read, so a reloading node never pairs an
-- entry with the holder of another moment (both hashes share one slot).
-- KEYS[1]  {P:sig}:dir   KEYS[2] {P:sig}:holders
-- Returns {HGETALL dir, HGETALL holders}.
return {redis.call('HGETALL', KEYS[1]), redis.call('HGETALL', KEYS[2])}
