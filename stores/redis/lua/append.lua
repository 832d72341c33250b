-- Append ledger records to one run (no state change), checking the chain head; optionally
-- first look for an effect result already recorded under an idempotency key.
--
-- KEYS, in this order (AppendKeys in stores/redis/argv.py):
-- KEYS[1]      run            run hash {h: chain head, t: token, d: dispatch, g: fencing token}
-- KEYS[2]      ledger         ledger stream (field r: msgpack record, g: fencing token of its writer)
-- KEYS[3]      results        results hash (idempotency key -> msgpack result; the first write wins)
--
-- ARGV, in this order (AppendArgs in stores/redis/argv.py, then the records):
-- ARGV[1]      expected_head  the chain head the records link to ("" when the ledger is empty)
-- ARGV[2]      new_head       the chain head after the records
-- ARGV[3]      token          unique per call, kept in field t (a re-sent call is a no-op)
-- ARGV[4]      lookup_key     idempotency key to look up first ("" for none)
-- ARGV[5]      dispatch       dispatch to keep in field d ("" leaves d as it is)
-- ARGV[6]      fence          the fencing token the writer holds ("" for none); older than field g: refused
-- ARGV[7..]    records        n, then n msgpack records, then m, then m pairs (idempotency key, msgpack result)
--
-- Returns {OK, 0} when appended; {FOUND, result} when lookup_key has a recorded result (nothing
-- appended: the caller reuses it); {HEAD_MOVED, stored head} when the chain head moved (nothing
-- written); {STALE, fencing token} when the writer's lease was granted again since (nothing written).

local OK, HEAD_MOVED, FOUND, STALE = 1, 2, 4, 6  -- Reply in stores/redis/scripts.py

local stored = redis.call('HMGET', KEYS[1], 'h', 't', 'g')
if stored[2] == ARGV[3] then return {OK, 0} end
local held = tonumber(stored[3]) or 0
if ARGV[6] ~= '' then
  if tonumber(ARGV[6]) < held then return {STALE, held} end
  held = tonumber(ARGV[6])
end
if ARGV[4] ~= '' then
  local found = redis.call('HGET', KEYS[3], ARGV[4])
  if found then return {FOUND, found} end
end
local head = stored[1] or ''
if head ~= ARGV[1] then return {HEAD_MOVED, head} end
local n = tonumber(ARGV[7])
for i = 1, n do
  redis.call('XADD', KEYS[2], '*', 'r', ARGV[7 + i], 'g', held)
end
local at = 8 + n
for i = 1, tonumber(ARGV[at]) do
  redis.call('HSETNX', KEYS[3], ARGV[at + 2 * i - 1], ARGV[at + 2 * i])
end
if ARGV[5] ~= '' then
  redis.call('HSET', KEYS[1], 'h', ARGV[2], 't', ARGV[3], 'd', ARGV[5])
else
  redis.call('HSET', KEYS[1], 'h', ARGV[2], 't', ARGV[3])
end
return {OK, 0}
