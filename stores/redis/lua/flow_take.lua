-- Take a dispatched (or dropped) item out of its fair-dispatch queue (flow_park.lua), and
-- advance its key's pass; a key whose queue is now empty leaves the ready set.
--
-- KEYS[1]      deferred     ZSET item id -> priority and arrival
-- KEYS[2]      items        HASH item id -> the item
-- KEYS[3]      ready        ZSET fairness key -> when its head may be tried
-- KEYS[4]      passes       HASH fairness key -> its pass; field "" the last pass served
--
-- ARGV[1]      item_id
-- ARGV[2]      fkey
-- ARGV[3]      stride       what serving one item adds to the key's pass (1 / weight); "" nothing
--
-- Returns {taken, left}: taken 1 when the item was queued, left the items still in the key's queue.

local taken = redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
if taken == 1 and ARGV[3] ~= '' then
  local mine = tonumber(redis.call('HGET', KEYS[4], ARGV[2]) or '0')
  redis.call('HSET', KEYS[4], '', string.format('%.9f', mine))
  redis.call('HSET', KEYS[4], ARGV[2], string.format('%.9f', mine + tonumber(ARGV[3])))
end
local left = redis.call('ZCARD', KEYS[1])
if left == 0 then redis.call('ZREM', KEYS[3], ARGV[2]) end
return {taken, left}
