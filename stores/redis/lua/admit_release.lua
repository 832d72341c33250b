-- Give back what flow-control holders hold (admit.lua): their slots, their open budget
-- reservations (what they reserved stays spent; reconcile it first: admit_reconcile.lua), and
-- their place in the holders index. "release": a holder whose result committed; "reclaim": the
-- sweep, for holders whose lease expired (a holder renewed or admitted again since is left).
-- The caller reads each holder's held set first; a rule id added since (a concurrent
-- admission of the same holder) keeps the holder in the index, reported as left over.
--
-- KEYS[1]      holders      ZSET holder -> lease expiry (epoch ms)
-- KEYS[2]      peek         ZSET whose size is returned (the fair-dispatch ready set: does deferred
--                           work wait for what was given back?); FlowKeys.unqueued() when not asked
-- KEYS[3..]    holder_keys  per holder, in the order of ARGV: its held SET, then per rule id listed
--                           its slots ZSET and its budget HASH
--
-- ARGV[1]      mode         "release" or "reclaim"
-- ARGV[2]      now_ms       "" in production (the Redis clock); tests pass their clock
-- ARGV[3..]    holders      per holder: holder id, n, then its n rule ids
--
-- Returns {OK, slots removed, holders removed, holders left over, now µs, size of peek}.

local OK = 1  -- Reply in stores/redis/scripts.py

local now_us
if ARGV[2] == '' then
  local t = redis.call('TIME')
  now_us = t[1] * 1000000 + t[2]
else
  now_us = tonumber(ARGV[2]) * 1000
end
local now = math.floor(now_us / 1000)
local reclaim = ARGV[1] == 'reclaim'

local slots, done, left = 0, 0, 0
local k, a = 3, 3
while a <= #ARGV do
  local holder, n = ARGV[a], tonumber(ARGV[a + 1])
  local go = true
  if reclaim then
    local expiry = tonumber(redis.call('ZSCORE', KEYS[1], holder))
    go = expiry ~= nil and expiry <= now
  end
  if go then
    local field = 'r:' .. holder
    for j = 1, n do
      slots = slots + redis.call('ZREM', KEYS[k + 2 * j - 1], holder)
      redis.call('HDEL', KEYS[k + 2 * j], field)
    end
    if n > 0 then redis.call('SREM', KEYS[k], unpack(ARGV, a + 2, a + 1 + n)) end
    if redis.call('SCARD', KEYS[k]) == 0 then
      done = done + redis.call('ZREM', KEYS[1], holder)
    else
      left = left + 1
    end
  end
  k, a = k + 1 + 2 * n, a + 2 + n
end
return {OK, slots, done, left, now_us, redis.call('ZCARD', KEYS[2])}
