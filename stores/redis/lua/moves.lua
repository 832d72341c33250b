-- The index moves of one commit that commit.lua (its "all" mode, on one Redis) and index.lua
-- (Redis Cluster, after a "run" mode commit) share. stores/redis/scripts.py puts this file
-- in front of both when it reads them, so they are written once. Each script moves the
-- run's status and wait-reason entries its own way first.
--
-- k: key names  {updated, workflow, wait_old, wait_new, timers, children, events, leases}
-- a: values     {run_id, updated (epoch µs), status, wait_old, wait_new (wait keys, "" for none),
--                until_ms ("" for none), has_parent ("1" or "0"), events_maxlen, version,
--                lease_ms (from now by Redis TIME, "" for none), now_ms (the caller's TIME, epoch ms;
--                nil: read here)}

local function move_entries(k, a)
  local run_id = a.run_id
  redis.call('ZADD', k.updated, a.updated, run_id)
  redis.call('ZADD', k.workflow, a.updated, run_id)
  if a.wait_old ~= '' and a.wait_old ~= a.wait_new then redis.call('SREM', k.wait_old, run_id) end
  if a.wait_new ~= '' then redis.call('SADD', k.wait_new, run_id) end
  if a.until_ms ~= '' then
    redis.call('ZADD', k.timers, a.until_ms, run_id)
  else
    redis.call('ZREM', k.timers, run_id)
  end
  if a.has_parent == '1' then redis.call('SADD', k.children, run_id) end
  if a.lease_ms ~= '' then
    local now_ms = a.now_ms
    if not now_ms then
      local now = redis.call('TIME')
      now_ms = now[1] * 1000 + math.floor(now[2] / 1000)
    end
    redis.call('ZADD', k.leases, now_ms + tonumber(a.lease_ms), run_id)
  else
    redis.call('ZREM', k.leases, run_id)
  end
  redis.call('XADD', k.events, 'MAXLEN', '~', a.events_maxlen, '*', 'run_id', run_id, 'status', a.status,
             'v', a.version)
end
