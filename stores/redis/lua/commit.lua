-- One atomic commit of one run: check its version and chain head, write its state,
-- append its ledger records, record effect results, and move every index.
--
-- KEYS[1]  run hash        {s: msgpack state, v: version, h: chain head}
-- KEYS[2]  ledger stream   (field r: msgpack record)
-- KEYS[3]  results hash    (idempotency key -> msgpack result; first write wins)
-- KEYS[4]  idx updated     KEYS[5]  idx workflow
-- KEYS[6]  idx status old  KEYS[7]  idx status new
-- KEYS[8]  idx reason old  KEYS[9]  idx reason new
-- KEYS[10] wait set old    KEYS[11] wait set new
-- KEYS[12] timers          KEYS[13] parent's children set   KEYS[14] events stream
-- KEYS[15] leases          (run id -> lease expiry, epoch ms by the Redis clock)
--
-- ARGV[1]  "all": also move the indexes (one Redis: one call does everything);
--          "run": only the run's own keys (Redis Cluster: index.lua follows, and KEYS[4..]
--          may be omitted)
-- ARGV[2]  expected version: a number, "new" (the run must not exist) or "any"
-- ARGV[3]  expected chain head ("" when the ledger is empty)
-- ARGV[4]  run id           ARGV[5]  msgpack state          ARGV[6]  updated_at (epoch µs)
-- ARGV[7]  status new       ARGV[8]  status old ("" if none)
-- ARGV[9]  reason new ("")  ARGV[10] reason old ("")
-- ARGV[11] wait key new ("") ARGV[12] wait key old ("")
-- ARGV[13] until (epoch ms, "" if none)   ARGV[14] "1" if the run has a parent
-- ARGV[15] events stream max length       ARGV[16] new chain head ("" if no records)
-- ARGV[17] commit token (unique per call, kept in field t)
-- ARGV[18] dispatch: what the run expects next (msgpack, kept in field d), "" to remove it
-- ARGV[19] lease in ms from now (Redis TIME) for the follow-up that dispatch names, "" for none
-- ARGV[20] number of records n, then n records, then the number of results m, then m pairs
--
-- (Appending records without a state, before an effect runs, is append.lua.)
--
-- Returns {1, version} on success; {0, actual version} on a
-- version conflict (-1 when the run does not exist); {2, actual head} when the chain head
-- moved; {3, version} when a "new" run already exists. Nothing is written unless it returns 1.
-- A call whose token is already stored was applied before (the reply was lost and the
-- client retried): it returns {1, ...} again and writes nothing.

local expected = ARGV[2]
local stored = redis.call('HMGET', KEYS[1], 'v', 'h', 't', 'd')
local version = tonumber(stored[1])
local head = stored[2] or ''
if stored[3] == ARGV[17] then return {1, version or 0} end

if expected == 'new' then
  if version then return {3, version} end
elseif expected ~= 'any' then
  if not version or version ~= tonumber(expected) then return {0, version or -1} end
end
if head ~= ARGV[3] then return {2, head} end

local n = tonumber(ARGV[20])
for i = 1, n do
  redis.call('XADD', KEYS[2], '*', 'r', ARGV[20 + i])
end
local at = 21 + n
local m = tonumber(ARGV[at])
for i = 1, m do
  redis.call('HSETNX', KEYS[3], ARGV[at + 2 * i - 1], ARGV[at + 2 * i])
end
local new_head = head
if n > 0 then new_head = ARGV[16] end

local new_version = (version or 0) + 1
if ARGV[18] ~= '' then
  redis.call('HSET', KEYS[1], 's', ARGV[5], 'v', new_version, 'h', new_head, 't', ARGV[17], 'd', ARGV[18])
else
  redis.call('HSET', KEYS[1], 's', ARGV[5], 'v', new_version, 'h', new_head, 't', ARGV[17])
  if stored[4] then redis.call('HDEL', KEYS[1], 'd') end
end
if ARGV[1] == 'run' then return {1, new_version} end

-- The index moves below are also index.lua (Cluster mode); change both together.
local run_id, updated = ARGV[4], ARGV[6]
redis.call('ZADD', KEYS[4], updated, run_id)
redis.call('ZADD', KEYS[5], updated, run_id)
if ARGV[8] ~= '' and ARGV[8] ~= ARGV[7] then redis.call('ZREM', KEYS[6], run_id) end
redis.call('ZADD', KEYS[7], updated, run_id)
if ARGV[10] ~= '' and ARGV[10] ~= ARGV[9] then redis.call('ZREM', KEYS[8], run_id) end
if ARGV[9] ~= '' then redis.call('ZADD', KEYS[9], updated, run_id) end
if ARGV[12] ~= '' and ARGV[12] ~= ARGV[11] then redis.call('SREM', KEYS[10], run_id) end
if ARGV[11] ~= '' then redis.call('SADD', KEYS[11], run_id) end
if ARGV[13] ~= '' then
  redis.call('ZADD', KEYS[12], ARGV[13], run_id)
else
  redis.call('ZREM', KEYS[12], run_id)
end
if ARGV[14] == '1' then redis.call('SADD', KEYS[13], run_id) end
if ARGV[19] ~= '' then
  local now = redis.call('TIME')
  redis.call('ZADD', KEYS[15], now[1] * 1000 + math.floor(now[2] / 1000) + tonumber(ARGV[19]), run_id)
else
  redis.call('ZREM', KEYS[15], run_id)
end
redis.call('XADD', KEYS[14], 'MAXLEN', '~', ARGV[15], '*', 'run_id', run_id, 'status', ARGV[7], 'v', new_version)
return {1, new_version}
