-- Records written to the sink: never taken again ({P:T}).
-- KEYS[1] {P:T}:recq            session id -> when its record is due
-- KEYS[2] {P:T}:rec             session id -> ended Session JSON
-- ARGV[i] session id i
-- Returns 1.
for i = 1, #ARGV do
  redis.call('ZREM', KEYS[1], ARGV[i])
  redis.call('HDEL', KEYS[2], ARGV[i])
end
return 1
