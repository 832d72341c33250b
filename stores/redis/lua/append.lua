-- Append ledger records to one run (no state change), checking the chain head; optionally
-- first look for an effect result already recorded under an idempotency key.
--
-- KEYS[1]  run hash   KEYS[2]  ledger stream   KEYS[3]  results hash
--
-- ARGV[1]  expected chain head ("" when the ledger is empty)
-- ARGV[2]  new chain head
-- ARGV[3]  call token (kept in field t; a re-sent call is a no-op)
-- ARGV[4]  idempotency key to look up first ("" for none)
-- ARGV[5]  dispatch to keep in field d ("" leaves d as it is)
-- ARGV[6]  number of records n, then n msgpack records, then the number of results m,
--          then m pairs (idempotency key, msgpack result; HSETNX: the first wins)
--
-- Returns {1, 0} when appended; {4, result} when ARGV[4] has a recorded result (nothing
-- appended: the caller reuses it); {2, actual head} when the chain head moved (nothing written).

local stored = redis.call('HMGET', KEYS[1], 'h', 't')
if stored[2] == ARGV[3] then return {1, 0} end
if ARGV[4] ~= '' then
  local found = redis.call('HGET', KEYS[3], ARGV[4])
  if found then return {4, found} end
end
local head = stored[1] or ''
if head ~= ARGV[1] then return {2, head} end
local n = tonumber(ARGV[6])
for i = 1, n do
  redis.call('XADD', KEYS[2], '*', 'r', ARGV[6 + i])
end
local at = 7 + n
for i = 1, tonumber(ARGV[at]) do
  redis.call('HSETNX', KEYS[3], ARGV[at + 2 * i - 1], ARGV[at + 2 * i])
end
if ARGV[5] ~= '' then
  redis.call('HSET', KEYS[1], 'h', ARGV[2], 't', ARGV[3], 'd', ARGV[5])
else
  redis.call('HSET', KEYS[1], 'h', ARGV[2], 't', ARGV[3])
end
return {1, 0}
