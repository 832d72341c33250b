-- One flow-control admission (issue 14): check every rule given and take everything (a slot
-- of each concurrency rule, one emission of each rate rule, a reservation of the estimated
-- tokens and cost on each budget rule) or nothing. The caller resolves which rules apply;
-- every key is in KEYS, all under the flow hash tag (stores/redis/flowkeys.py).
-- A holder whose lease is live is admitted again without taking anything (a redelivery, or the
-- task of an attempt the dispatcher or its tick admitted before sending it); when less than a
-- third of a lease is left, its lease and its slot in each concurrency rule given are renewed
-- to now + lease (the cadence of an effect's own renewals), so a share taken before the send
-- cannot lapse in the moment its task starts.
-- Slot members whose lease expired are not counted (the sweep removes them: admit_release.lua).
-- Each rule sends only the keys and the numbers of the limits it has (a concurrency rule: its
-- slots key and its limit), so that Redis builds no Lua string and runs no command for the rest.
--
-- KEYS[1]      holders      ZSET holder -> lease expiry (epoch ms) across every rule
-- KEYS[2]      held         SET the rule ids the holder holds a slot or a reservation of
-- KEYS[3]      behind       ZSET a new holder must not overtake: its fair-dispatch queue (deferred,
--                           kind "queue", while it holds anything); FlowKeys.unqueued() when none
-- KEYS[4]      retaken      STRING count of slots taken again by a holder whose lease had expired
--                           (its old share is reclaimed here, not by the sweep: the sweep adds this)
-- KEYS[5..]    rule_keys    per rule, in the order of ARGV, the keys of the limits it has: slots
--                           (concurrency; ZSET holder -> lease expiry), rate (rate; STRING GCRA
--                           theoretical arrival time, epoch µs), budget (tokens or cost; HASH w: window
--                           start ms, l: window ms, t: tokens, c: micro-dollars, r:<holder>:
--                           "tokens,micro,w" reserved, -1 where the rule does not count it)
--
-- ARGV[1]      holder
-- ARGV[2]      lease_ms
-- ARGV[3]      tokens       estimate reserved on every token rule
-- ARGV[4]      cost         estimate in micro-dollars reserved on every cost rule
-- ARGV[5]      now_ms       "" in production (the Redis clock); tests pass their clock (then no key expires)
-- ARGV[6..]    rules        per rule: rule id; mask, the sum of 1 (concurrency), 2 (rate), 4 (tokens),
--                           8 (cost) and 16 (fail: refuse instead of defer); then the numbers of the
--                           limits it has, in this order: concurrency; emission interval µs, burst
--                           tolerance µs; tokens; micro-dollars; window ms (tokens or cost)
--
-- Returns {ADMITTED, again, now µs} (again 1: a live holder, nothing taken);
-- {DEFERRED, rule index (from 1), kind, until ms, now µs}: the rule blocking longest, until when it
-- can admit (concurrency: when enough leases expire, unless released before); rule index 0, kind
-- "queue", until 0: work waits in the behind queue (no rule was checked);
-- {REFUSED, rule index, kind, reason, now µs}: the first rule that refuses ("exhausted": its policy is
-- fail; "oversize": the reservation is larger than the whole budget). Kind: concurrency, rate,
-- tokens or cost_usd. Nothing is written unless ADMITTED.

local ADMITTED, DEFERRED, REFUSED = 7, 8, 9  -- Reply in stores/redis/scripts.py

local holder = ARGV[1]
local fmt = string.format
local now_us, injected
if ARGV[5] == '' then
  local t = redis.call('TIME')
  now_us = t[1] * 1000000 + t[2]
else
  now_us, injected = tonumber(ARGV[5]) * 1000, true
end
local now = (now_us - now_us % 1000) / 1000

local again = redis.call('ZSCORE', KEYS[1], holder)
if again and tonumber(again) > now then
  local lease = tonumber(ARGV[2])
  if (tonumber(again) - now) * 3 >= lease then return {ADMITTED, 1, now_us} end
  local expiry = fmt('%d', now + lease)
  local a, k = 6, 5
  while a <= #ARGV do  -- walk the rules as pass 2 does, renewing the slots held
    local m = tonumber(ARGV[a + 1])
    a = a + 2
    if m % 2 == 1 then
      redis.call('ZADD', KEYS[k], 'XX', expiry, holder)
      a, k = a + 1, k + 1
    end
    if m % 4 >= 2 then a, k = a + 2, k + 1 end
    if m % 16 >= 4 then
      a = a + 1 + (m % 8 >= 4 and 1 or 0) + (m % 16 >= 8 and 1 or 0)
      k = k + 1
    end
  end
  redis.call('ZADD', KEYS[1], expiry, holder)
  return {ADMITTED, 1, now_us}
end
if redis.call('ZCARD', KEYS[3]) > 0 then return {DEFERRED, 0, 'queue', 0, now_us} end

local want_t, want_c = tonumber(ARGV[3]), tonumber(ARGV[4])
local field = 'r:' .. holder  -- the holder's reservation in a budget hash
local live_from = '(' .. now  -- a lease expiring at now has ended

-- The longest deferral so far; the first refusal returns at once (no later rule changes it).
local d_i, d_kind, d_until
local function block(i, kind, fail, until_ms)
  if fail then return {REFUSED, i, kind, 'exhausted', now_us} end
  if not d_i or until_ms > d_until then d_i, d_kind, d_until = i, kind, until_ms end
end

-- Pass 1 reads and checks every rule. What pass 2 writes is kept in one flat list, in the order
-- of the rules: the mask; a rate rule's new TAT; a budget rule's HSET arguments (only the fields
-- that change) and whether its window is a new one. Numbers go to Redis as text made here with
-- %d (Redis would format each number given as one with %.17g, several times slower).
local plan, np = {}, 0
local n, a, k, last = 0, 6, 5, #ARGV
while a <= last do
  n = n + 1
  local m = tonumber(ARGV[a + 1])
  local fail = m >= 16
  np = np + 1
  plan[np] = m
  a = a + 2
  if m % 2 == 1 then
    local conc, key = tonumber(ARGV[a]), KEYS[k]
    a, k = a + 1, k + 1
    -- ZCARD counts expired leases too: under the limit by it, under it for sure
    if redis.call('ZCARD', key) >= conc then
      local live = redis.call('ZCOUNT', key, live_from, '+inf')
      if live >= conc then
        local next_free = redis.call('ZRANGEBYSCORE', key, live_from, '+inf', 'WITHSCORES', 'LIMIT', live - conc, 1)
        local r = block(n, 'concurrency', fail, tonumber(next_free[2]))
        if r then return r end
      end
    end
  end
  if m % 4 >= 2 then
    local emit, tau = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
    local tat = tonumber(redis.call('GET', KEYS[k])) or now_us
    a, k = a + 2, k + 1
    if tat < now_us then tat = now_us end
    if tat - now_us > tau then
      local r = block(n, 'rate', fail, math.ceil((tat - tau) / 1000))
      if r then return r end
    end
    np = np + 1
    plan[np] = tat + emit
  end
  if m % 16 >= 4 then
    local tok, cost
    if m % 8 >= 4 then tok, a = tonumber(ARGV[a]), a + 1 end
    if m % 16 >= 8 then cost, a = tonumber(ARGV[a]), a + 1 end
    local win_s = ARGV[a]
    local win = tonumber(win_s)
    local b = redis.call('HMGET', KEYS[k], 'w', 't', 'c', 'l')
    a, k = a + 1, k + 1
    local w = now - now % win
    local fresh = tonumber(b[1]) ~= w
    local t, c = 0, 0
    if not fresh then
      if tok then t = tonumber(b[2]) or 0 end
      if cost then c = tonumber(b[3]) or 0 end
    end
    if tok then
      if want_t > tok then return {REFUSED, n, 'tokens', 'oversize', now_us} end
      if t >= tok or t + want_t > tok then
        local r = block(n, 'tokens', fail, w + win)
        if r then return r end
      end
    end
    if cost then
      if want_c > cost then return {REFUSED, n, 'cost_usd', 'oversize', now_us} end
      if c >= cost or c + want_c > cost then
        local r = block(n, 'cost_usd', fail, w + win)
        if r then return r end
      end
    end
    -- the reservation: the estimates as sent (integers in full), -1 where the rule does not count
    -- one, and the window start
    local w_s = fresh and fmt('%d', w) or b[1]
    local res = (tok and ARGV[3] or '-1') .. ',' .. (cost and ARGV[4] or '-1') .. ',' .. w_s
    local args, na = {}, 0
    if fresh then  -- a window's first admission: the spend starts at this reservation
      args[1], args[2], args[3], args[4] = 'w', w_s, 't', tok and ARGV[3] or '0'
      args[5], args[6], args[7], args[8], na = 'c', cost and ARGV[4] or '0', 'l', win_s, 8
    else  -- only what changes: the spend of what the rule counts, a window length edited since
      if tok then args[1], args[2], na = 't', fmt('%d', t + want_t), 2 end
      if cost then args[na + 1], args[na + 2], na = 'c', fmt('%d', c + want_c), na + 2 end
      if b[4] ~= win_s then args[na + 1], args[na + 2], na = 'l', win_s, na + 2 end
    end
    args[na + 1], args[na + 2] = field, res
    plan[np + 1], plan[np + 2], np = args, fresh and 2 * win, np + 2
  end
end

if d_i then return {DEFERRED, d_i, d_kind, d_until, now_us} end

-- Pass 2: take everything, walking the rules, their keys and the plan again.
local lease = tonumber(ARGV[2])
local expiry = fmt('%d', now + lease)
local held, nh = {}, 0
np, a, k = 0, 6, 5
local retaken = 0
while a <= last do
  local rid, m = ARGV[a], plan[np + 1]
  a, np = a + 2, np + 1
  if m % 2 == 1 then
    if redis.call('ZADD', KEYS[k], expiry, holder) == 0 then retaken = retaken + 1 end  -- its expired one
    a, k, nh = a + 1, k + 1, nh + 1
    held[nh] = rid
  end
  if m % 4 >= 2 then
    local tat = plan[np + 1]
    if injected then
      redis.call('SET', KEYS[k], fmt('%d', tat))
    else
      redis.call('SET', KEYS[k], fmt('%d', tat), 'PX', fmt('%d', math.ceil((tat - now_us) / 1000) + 1000))
    end
    a, k, np = a + 2, k + 1, np + 1
  end
  if m % 16 >= 4 then
    redis.call('HSET', KEYS[k], unpack(plan[np + 1]))
    -- the hash outlives its window by one more, and the reservations of a window's first admission
    local two_windows = plan[np + 2]
    if two_windows and not injected then redis.call('PEXPIRE', KEYS[k], fmt('%d', two_windows + lease)) end
    if m % 2 == 0 then
      nh = nh + 1
      held[nh] = rid
    end
    a = a + 1 + (m % 8 >= 4 and 1 or 0) + (m % 16 >= 8 and 1 or 0)
    k, np = k + 1, np + 2
  end
end
if nh > 0 then redis.call('SADD', KEYS[2], unpack(held)) end
if retaken > 0 then redis.call('INCRBY', KEYS[4], retaken) end
redis.call('ZADD', KEYS[1], expiry, holder)
return {ADMITTED, 0, now_us}
