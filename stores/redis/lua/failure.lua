-- Keep the newest failure of a run (a raising node or effect handler, with its traceback) in
-- field `f` of the run hash, if the run exists. Outside the hash-chained ledger: replaced by
-- the next failure, read by `status` (and any UI) to show what went wrong.
--
-- KEYS[1]  the run hash (ar:{<run_id>}:run)
-- ARGV[1]  the failure, JSON text
--
-- Returns OK (1) when written, MISSING (5) when there is no such run (Reply in scripts.py).

local OK, MISSING = 1, 5
if redis.call('EXISTS', KEYS[1]) == 0 then
  return MISSING
end
redis.call('HSET', KEYS[1], 'f', ARGV[1])
return OK
