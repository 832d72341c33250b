-- Park one deferred piece of work (a run's start or an effect attempt) in the fair-dispatch
-- queue of its fairness key (issue 14, item 3): the dispatcher (workers/flow/dispatch.py) takes
-- it from there, key by key in weighted round robin, and sends its message once admitted.
-- Parking the same item again (a re-sent message deferred again) keeps its place and updates it.
--
-- KEYS[1]      deferred     ZSET item id -> priority * 1e15 + arrival sequence (lowest first)
-- KEYS[2]      items        HASH item id -> the item (JSON: what the dispatcher needs to admit and send it)
-- KEYS[3]      ready        ZSET fairness key -> when its head may be tried (epoch ms, Redis clock)
-- KEYS[4]      passes       HASH fairness key -> its pass (weighted round robin); field "" the last pass
--                           served, field "#seq" the arrival sequence
--
-- ARGV[1]      item_id
-- ARGV[2]      priority     1 (first) to 5
-- ARGV[3]      item         the item's JSON
-- ARGV[4]      ready_at     epoch ms the item may be tried again; "" now
-- ARGV[5]      fkey         the fairness key (the deferred queue's)
--
-- Returns {parked, now ms}: parked 1 for a new item, 0 for one parked before (kept in place).
-- A key that had nothing queued starts at the last pass served, not below it: time spent with
-- an empty queue earns no credit over the keys that kept waiting.

local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local at = now
if ARGV[4] ~= '' then at = tonumber(ARGV[4]) end
local fkey = ARGV[5]

local fresh = redis.call('HEXISTS', KEYS[2], ARGV[1]) == 0
if fresh then
  if redis.call('EXISTS', KEYS[1]) == 0 then
    local last = tonumber(redis.call('HGET', KEYS[4], '') or '0')
    local mine = tonumber(redis.call('HGET', KEYS[4], fkey) or '0')
    if mine < last then redis.call('HSET', KEYS[4], fkey, string.format('%.9f', last)) end
  end
  local seq = redis.call('HINCRBY', KEYS[4], '#seq', 1)
  redis.call('ZADD', KEYS[1], string.format('%d', tonumber(ARGV[2]) * 1000000000000000 + seq), ARGV[1])
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
local cur = redis.call('ZSCORE', KEYS[3], fkey)
if not cur or tonumber(cur) > at then redis.call('ZADD', KEYS[3], string.format('%d', at), fkey) end
if fresh then return {1, now} end
return {0, now}
