-- Move one run's entries in the cross-run indexes, after its commit (Redis Cluster, where
-- these keys live in one slot of their own, apart from the run's). Idempotent: it puts
-- the run in the status and reason indexes it belongs to and removes it from all the
-- others, so running it twice, or after a lost earlier call, leaves the same result.
-- The moves it shares with commit.lua's "all" mode are move_entries, in moves.lua.
--
-- KEYS, in this order (RedisBackend.commit in stores/redis/backend.py):
-- KEYS[1]      updated      idx of every run by updated_at
-- KEYS[2]      workflow     idx of the run's workflow
-- KEYS[3..7]   statuses     idx of each status: running, waiting, completed, failed, cancelled
-- KEYS[8..12]  reasons      idx of each wait reason: event, until, user, job, subworkflow
-- KEYS[13]     wait_old     wait set of the wait key loaded
-- KEYS[14]     wait_new     wait set of the wait key written
-- KEYS[15]     timers       timers (run id -> wake time, epoch ms)
-- KEYS[16]     children     the parent's children set
-- KEYS[17]     events       events stream
-- KEYS[18]     leases       leases (run id -> lease expiry, epoch ms by the Redis clock)
--
-- ARGV, in this order:
-- ARGV[1]      run_id
-- ARGV[2]      updated        updated_at (epoch µs)
-- ARGV[3]      status
-- ARGV[4]      reason         wait reason ("" if none)
-- ARGV[5]      wait_old       wait key loaded ("" if none)
-- ARGV[6]      wait_new       wait key written ("" if none)
-- ARGV[7]      until_ms       wake time (epoch ms, "" if none)
-- ARGV[8]      has_parent     "1" if the run has a parent
-- ARGV[9]      events_maxlen  events stream max length
-- ARGV[10]     version        the version the commit wrote
-- ARGV[11]     lease_ms       lease in ms from now (Redis TIME), "" for none
--
-- Returns OK (1; Reply in scripts.py).

local run_id, updated = ARGV[1], ARGV[2]
local statuses = {'running', 'waiting', 'completed', 'failed', 'cancelled'}
local reasons = {'event', 'until', 'user', 'job', 'subworkflow'}
for i, name in ipairs(statuses) do
  if name == ARGV[3] then redis.call('ZADD', KEYS[2 + i], updated, run_id)
  else redis.call('ZREM', KEYS[2 + i], run_id) end
end
for i, name in ipairs(reasons) do
  if name == ARGV[4] then redis.call('ZADD', KEYS[7 + i], updated, run_id)
  else redis.call('ZREM', KEYS[7 + i], run_id) end
end
move_entries(
  {updated = KEYS[1], workflow = KEYS[2], wait_old = KEYS[13], wait_new = KEYS[14], timers = KEYS[15],
   children = KEYS[16], events = KEYS[17], leases = KEYS[18]},
  {run_id = run_id, updated = updated, status = ARGV[3], wait_old = ARGV[5], wait_new = ARGV[6],
   until_ms = ARGV[7], has_parent = ARGV[8], events_maxlen = ARGV[9], version = ARGV[10],
   lease_ms = ARGV[11]})
return 1  -- OK (Reply in stores/redis/scripts.py)
