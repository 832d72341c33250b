-- Settle a flow-control holder's budget reservations with what the LLM call really used
-- (admit.lua reserved the estimate). A reservation of the current window is corrected by
-- the difference (a refund or a charge); one of a window that has ended charges only what was
-- used beyond it, to the current window. Each reservation is settled once (its field goes), so
-- a redelivered result changes nothing.
--
-- KEYS[1..]    budgets      the budget HASH of each rule id (FlowKeys.budget)
--
-- ARGV[1]      holder
-- ARGV[2]      tokens       tokens used
-- ARGV[3]      cost         micro-dollars spent
-- ARGV[4]      now_ms       "" in production (the Redis clock); tests pass their clock (then no key expires)
--
-- Returns {OK, reservations settled}.

local OK = 1  -- Reply in stores/redis/scripts.py

local now, injected
if ARGV[4] == '' then
  local t = redis.call('TIME')
  now = t[1] * 1000 + math.floor(t[2] / 1000)
else
  now, injected = tonumber(ARGV[4]), true
end
local field = 'r:' .. ARGV[1]
local used = {tonumber(ARGV[2]), tonumber(ARGV[3])}
local settled = 0
for i = 1, #KEYS do
  local b = redis.call('HMGET', KEYS[i], field, 'l', 'w')
  if b[1] then
    local rt, rc, w = string.match(b[1], '^(-?%d+),(-?%d+),(%d+)$')
    local win = tonumber(b[2])
    local cur = now - now % win
    local same = tonumber(w) == cur
    if not same and tonumber(b[3]) ~= cur then
      redis.call('HSET', KEYS[i], 'w', cur, 't', 0, 'c', 0)
      if not injected then redis.call('PEXPIRE', KEYS[i], 2 * win) end
    end
    for j, spec in ipairs({{tonumber(rt), 't'}, {tonumber(rc), 'c'}}) do
      if spec[1] >= 0 then
        local diff = used[j] - spec[1]
        if not same and diff < 0 then diff = 0 end
        if diff ~= 0 then redis.call('HINCRBY', KEYS[i], spec[2], diff) end
      end
    end
    redis.call('HDEL', KEYS[i], field)
    settled = settled + 1
  end
end
return {OK, settled}
