-- Claim the due members of a sorted set scored in epoch ms (the timers or the leases): the
-- members whose score is at or before now (the Redis clock) get the score now + hold, and
-- are returned. Run by the recovery sweep, on any number of workers at once: a member is
-- claimed by one caller per hold period, so the sweeps of many workers do not pile up
-- duplicate messages for the same run. A commit that moves the run rescores or removes it.
--
-- KEYS[1]  the sorted set
-- ARGV[1]  most members to claim   ARGV[2]  hold in ms
--
-- Returns {now in ms, member, member, ...}.

local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
local out = {now}
for i, member in ipairs(due) do
  redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[2]), member)
  out[i + 1] = member
end
return out
