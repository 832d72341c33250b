-- The fencing token of one run outside a commit: the recovery sweep grants the lease of a
-- run whose lease expired again (to the message it sends next), and a long effect checks
-- that it still holds the lease before renewing it. (A commit that takes a lease grants
-- one too: commit.lua.) Run hash only, so it runs in the run's slot on Redis Cluster; the
-- caller moves the lease index entry after an OK.
--
-- KEYS[1]  run       run hash {v: version, g: fencing token, x: when the lease first expired since the
--                    last commit, before a grant by the sweep (epoch ms; the next commit removes it)}
--
-- ARGV[1]  mode      "grant": add one to the token if the run is still at the version expected;
--                    "check": is the token the one the caller holds?
-- ARGV[2]  expected  the version loaded ("grant") or the token held ("check")
-- ARGV[3]  expired   grant: when the lease was found expired (epoch ms, kept in field x unless one is)
--
-- Returns {OK, token} (grant: the new token; check: the token held); {CONFLICT, stored version}
-- when a grant finds the run moved (-1 when it does not exist); {STALE, stored token} when a
-- check finds the lease granted to another since. Nothing is written unless a grant returns OK.

local CONFLICT, OK, STALE = 0, 1, 6  -- Reply in stores/redis/scripts.py

local stored = redis.call('HMGET', KEYS[1], 'v', 'g')
local token = tonumber(stored[2]) or 0
if ARGV[1] == 'grant' then
  local version = tonumber(stored[1])
  if not version or version ~= tonumber(ARGV[2]) then return {CONFLICT, version or -1} end
  redis.call('HSETNX', KEYS[1], 'x', ARGV[3])
  return {OK, redis.call('HINCRBY', KEYS[1], 'g', 1)}
end
if token ~= tonumber(ARGV[2]) then return {STALE, token} end
return {OK, token}
