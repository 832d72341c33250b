-- One atomic commit of one run: check its version and chain head, write its state,
-- append its ledger records, record effect results, and move every index.
-- (Appending records without a state, before an effect runs, is append.lua.)
--
-- KEYS, in this order (CommitKeys in stores/redis/argv.py):
-- KEYS[1]      run          run hash {s: msgpack state, v: version, h: chain head, t: token, d: dispatch,
--                            n: expired leases of the dispatch (the sweep counts them; removed here),
--                            g: fencing token (each lease grant adds one),
--                            x: when the lease first expired before the sweep granted it again (removed here),
--                            a: why flow control deferred the run's effect (JSON; removed here)}
-- KEYS[2]      ledger       ledger stream (field r: msgpack record, g: fencing token of its writer)
-- KEYS[3]      results      results hash (idempotency key -> msgpack result; the first write wins)
-- KEYS[4]      updated      idx of every run by updated_at
-- KEYS[5]      workflow     idx of the run's workflow
-- KEYS[6]      status_old   idx of the status loaded
-- KEYS[7]      status_new   idx of the status written
-- KEYS[8]      reason_old   idx of the wait reason loaded
-- KEYS[9]      reason_new   idx of the wait reason written
-- KEYS[10]     wait_old     wait set of the wait key loaded
-- KEYS[11]     wait_new     wait set of the wait key written
-- KEYS[12]     timers       timers (run id -> wake time, epoch ms)
-- KEYS[13]     children     the parent's children set
-- KEYS[14]     events       events stream
-- KEYS[15]     leases       leases (run id -> lease expiry, epoch ms by the Redis clock)
--
-- ARGV, in this order (CommitArgs in stores/redis/argv.py, then the records):
-- ARGV[1]      mode              "all": also move the indexes (one Redis: one call does everything);
--                                "run": only the run's own keys (Redis Cluster: index.lua follows,
--                                and KEYS[4..] may be omitted)
-- ARGV[2]      expected_version  a number, "new" (the run must not exist) or "any"
-- ARGV[3]      expected_head     the chain head the records link to ("" when the ledger is empty)
-- ARGV[4]      run_id
-- ARGV[5]      state             msgpack state
-- ARGV[6]      updated           updated_at (epoch µs)
-- ARGV[7]      status_new
-- ARGV[8]      status_old        ("" if none)
-- ARGV[9]      reason_new        ("" if none)
-- ARGV[10]     reason_old        ("" if none)
-- ARGV[11]     wait_new          wait key written ("" if none)
-- ARGV[12]     wait_old          wait key loaded ("" if none)
-- ARGV[13]     until_ms          wake time (epoch ms, "" if none)
-- ARGV[14]     has_parent        "1" if the run has a parent
-- ARGV[15]     events_maxlen     events stream max length (XADD MAXLEN ~)
-- ARGV[16]     new_head          chain head after the records ("" if no records)
-- ARGV[17]     token             unique per call, kept in field t
-- ARGV[18]     dispatch          what the run expects next (msgpack, kept in field d), "" to remove it
-- ARGV[19]     lease_ms          lease in ms from now (Redis TIME) for the follow-up the dispatch names, "" for none;
--                                a lease is a grant: the fencing token goes up by one
-- ARGV[20]     fence             the fencing token the writer holds ("" for a writer holding no lease: a
--                                producer, an operator); older than field g: refused
-- ARGV[21..]   records           n, then n msgpack records, then m, then m pairs (idempotency key, msgpack result),
--                                then (optional, "all" mode) e, then e triples (event name, wait name, JSON):
--                                events added to the events stream with the commit (named waits' events)
--
-- Returns {OK, new version, fencing token}; {CONFLICT, stored version} (-1 when the run does not
-- exist); {HEAD_MOVED, stored head}; {EXISTS, version} when a "new" run already exists;
-- {STALE, fencing token} when the writer's lease was granted again since. Nothing is written
-- unless it returns OK. A call whose token is already stored was applied before (the reply
-- was lost and the client retried): it returns OK again and writes nothing.

local CONFLICT, OK, HEAD_MOVED, EXISTS, STALE = 0, 1, 2, 3, 6  -- Reply in stores/redis/scripts.py

local expected = ARGV[2]
local stored = redis.call('HMGET', KEYS[1], 'v', 'h', 't', 'd', 'n', 'g', 'x', 'a')
local version = tonumber(stored[1])
local head = stored[2] or ''
local fence = tonumber(stored[6]) or 0
if stored[3] == ARGV[17] then return {OK, version or 0, fence} end
-- A writer whose lease was granted to another since it loaded is refused first, so that it
-- is told why even when the version it expects is still the stored one.
local held = fence
if ARGV[20] ~= '' then
  held = tonumber(ARGV[20])
  if held < fence then return {STALE, fence} end
end

if expected == 'new' then
  if version then return {EXISTS, version} end
elseif expected ~= 'any' then
  if not version or version ~= tonumber(expected) then return {CONFLICT, version or -1} end
end
if head ~= ARGV[3] then return {HEAD_MOVED, head} end

local n = tonumber(ARGV[21])
for i = 1, n do
  redis.call('XADD', KEYS[2], '*', 'r', ARGV[21 + i], 'g', held)
end
local at = 22 + n
local m = tonumber(ARGV[at])
for i = 1, m do
  redis.call('HSETNX', KEYS[3], ARGV[at + 2 * i - 1], ARGV[at + 2 * i])
end
local new_head = head
if n > 0 then new_head = ARGV[16] end

local new_version = (version or 0) + 1
if ARGV[19] ~= '' then fence = fence + 1 end
if ARGV[18] ~= '' then
  redis.call('HSET', KEYS[1], 's', ARGV[5], 'v', new_version, 'h', new_head, 't', ARGV[17], 'g', fence,
             'd', ARGV[18])
else
  redis.call('HSET', KEYS[1], 's', ARGV[5], 'v', new_version, 'h', new_head, 't', ARGV[17], 'g', fence)
  if stored[4] then redis.call('HDEL', KEYS[1], 'd') end
end
-- A commit is progress: the count of lost deliveries of the old dispatch starts again.
if stored[5] or stored[7] or stored[8] then redis.call('HDEL', KEYS[1], 'n', 'x', 'a') end
-- The Redis clock after the write (epoch ms): a task that runs the run's next step itself
-- takes it with the state it wrote, instead of loading both again.
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if ARGV[1] == 'run' then return {OK, new_version, fence, now_ms} end

-- The loaded state's entries are the stored ones (the version check proves it): move only
-- what changed. index.lua, which cannot know them, clears every other status and reason.
local run_id, updated = ARGV[4], ARGV[6]
if ARGV[8] ~= '' and ARGV[8] ~= ARGV[7] then redis.call('ZREM', KEYS[6], run_id) end
redis.call('ZADD', KEYS[7], updated, run_id)
if ARGV[10] ~= '' and ARGV[10] ~= ARGV[9] then redis.call('ZREM', KEYS[8], run_id) end
if ARGV[9] ~= '' then redis.call('ZADD', KEYS[9], updated, run_id) end
move_entries(
  {updated = KEYS[4], workflow = KEYS[5], wait_old = KEYS[10], wait_new = KEYS[11], timers = KEYS[12],
   children = KEYS[13], events = KEYS[14], leases = KEYS[15]},
  {run_id = run_id, updated = updated, status = ARGV[7], wait_old = ARGV[12], wait_new = ARGV[11],
   until_ms = ARGV[13], has_parent = ARGV[14], events_maxlen = ARGV[15], version = new_version,
   lease_ms = ARGV[19], now_ms = now_ms})
local ev_at = at + 2 * m + 1
local e = tonumber(ARGV[ev_at] or '0') or 0
for i = 1, e do
  local j = ev_at + 3 * (i - 1)
  redis.call('XADD', KEYS[14], 'MAXLEN', '~', ARGV[15], '*', 'event', ARGV[j + 1], 'run_id', run_id,
             'wait', ARGV[j + 2], 'data', ARGV[j + 3])
end
return {OK, new_version, fence, now_ms}
