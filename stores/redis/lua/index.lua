-- Move one run's entries in the cross-run indexes, after its commit (Redis Cluster, where
-- these keys live in one slot of their own, apart from the run's). Idempotent: it puts
-- the run in the status and reason indexes it belongs to and removes it from all the
-- others, so running it twice, or after a lost earlier call, leaves the same result.
--
-- KEYS[1]  idx updated   KEYS[2]  idx workflow
-- KEYS[3..7]   idx status: running, waiting, completed, failed, cancelled
-- KEYS[8..12]  idx reason: event, until, user, job, subworkflow
-- KEYS[13] wait set old  KEYS[14] wait set new  KEYS[15] timers
-- KEYS[16] parent's children set   KEYS[17] events stream   KEYS[18] leases
--
-- ARGV[1] run id  ARGV[2] updated_at (epoch µs)  ARGV[3] status  ARGV[4] wait reason ("")
-- ARGV[5] wait key old ("")  ARGV[6] wait key new ("")  ARGV[7] until (epoch ms, "")
-- ARGV[8] "1" if the run has a parent  ARGV[9] events max length  ARGV[10] the new version
-- ARGV[11] lease in ms from now (Redis TIME), "" for none
--
-- Returns 1.
--
-- The same index moves are the tail of commit.lua (its "all" mode, one call on a single
-- Redis); change both together. The scenario suite runs on both modes.

local run_id, updated = ARGV[1], ARGV[2]
local statuses = {'running', 'waiting', 'completed', 'failed', 'cancelled'}
local reasons = {'event', 'until', 'user', 'job', 'subworkflow'}
redis.call('ZADD', KEYS[1], updated, run_id)
redis.call('ZADD', KEYS[2], updated, run_id)
for i, name in ipairs(statuses) do
  if name == ARGV[3] then redis.call('ZADD', KEYS[2 + i], updated, run_id)
  else redis.call('ZREM', KEYS[2 + i], run_id) end
end
for i, name in ipairs(reasons) do
  if name == ARGV[4] then redis.call('ZADD', KEYS[7 + i], updated, run_id)
  else redis.call('ZREM', KEYS[7 + i], run_id) end
end
if ARGV[5] ~= '' and ARGV[5] ~= ARGV[6] then redis.call('SREM', KEYS[13], run_id) end
if ARGV[6] ~= '' then redis.call('SADD', KEYS[14], run_id) end
if ARGV[7] ~= '' then
  redis.call('ZADD', KEYS[15], ARGV[7], run_id)
else
  redis.call('ZREM', KEYS[15], run_id)
end
if ARGV[8] == '1' then redis.call('SADD', KEYS[16], run_id) end
if ARGV[11] ~= '' then
  local now = redis.call('TIME')
  redis.call('ZADD', KEYS[18], now[1] * 1000 + math.floor(now[2] / 1000) + tonumber(ARGV[11]), run_id)
else
  redis.call('ZREM', KEYS[18], run_id)
end
redis.call('XADD', KEYS[17], 'MAXLEN', '~', ARGV[9], '*', 'run_id', run_id, 'status', ARGV[3], 'v', ARGV[10])
return 1
