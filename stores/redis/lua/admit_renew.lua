-- Renew the lease of a flow-control holder (a long effect): its holders entry and each of its
-- slots get the expiry now + lease. A holder whose lease expired gets nothing: its slots
-- stopped counting at the expiry and may have been taken by others since.
--
-- KEYS[1]      holders      ZSET holder -> lease expiry (epoch ms)
-- KEYS[2..]    slots        the slots ZSET of each rule id the holder holds
--
-- ARGV[1]      holder
-- ARGV[2]      lease_ms
-- ARGV[3]      now_ms       "" in production (the Redis clock); tests pass their clock
--
-- Returns {OK, new expiry ms}; {MISSING} when the holder holds no live lease (released, expired).

local OK, MISSING = 1, 5  -- Reply in stores/redis/scripts.py

local now
if ARGV[3] == '' then
  local t = redis.call('TIME')
  now = t[1] * 1000 + math.floor(t[2] / 1000)
else
  now = tonumber(ARGV[3])
end
local expiry = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[1]))
if not expiry or expiry <= now then return {MISSING} end
expiry = now + tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], expiry, ARGV[1])
for i = 2, #KEYS do
  redis.call('ZADD', KEYS[i], 'XX', expiry, ARGV[1])
end
return {OK, expiry}
