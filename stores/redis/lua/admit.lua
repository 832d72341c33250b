-- One flow-control admission (issue 14): check every rule given and take everything (a slot
-- of each concurrency rule, one emission of each rate rule, a reservation of the estimated
-- tokens and cost on each budget rule) or nothing. The caller resolves which rules apply;
-- every key is in KEYS, all under the flow hash tag (stores/redis/flowkeys.py).
-- A holder whose lease is live is admitted again without taking anything (a redelivery).
-- Slot members whose lease expired are not counted (the sweep removes them: admit_release.lua).
--
-- KEYS[1]      holders      ZSET holder -> lease expiry (epoch ms) across every rule
-- KEYS[2]      held         SET the rule ids the holder holds a slot or a reservation of
-- KEYS[3..]    rule_keys    three per rule, in the order of ARGV: slots (ZSET holder -> lease expiry),
--                           rate (STRING GCRA theoretical arrival time, epoch µs), budget (HASH w: window
--                           start ms, l: window ms, t: tokens, c: micro-dollars, r:<holder>: "tokens,micro,w"
--                           reserved, -1 where the rule does not count it)
--
-- ARGV[1]      holder
-- ARGV[2]      lease_ms
-- ARGV[3]      tokens       estimate reserved on every token rule
-- ARGV[4]      cost         estimate in micro-dollars reserved on every cost rule
-- ARGV[5]      now_ms       "" in production (the Redis clock); tests pass their clock (then no key expires)
-- ARGV[6..]    rules        eight per rule: rule id, fail ("1": refuse instead of defer), concurrency,
--                           emission interval µs, burst tolerance µs, tokens, micro-dollars, window ms
--                           ("" for what the rule does not limit)
--
-- Returns {ADMITTED, again, now µs} (again 1: a live holder, nothing taken);
-- {DEFERRED, rule index (from 1), kind, until ms, now µs}: the rule blocking longest, until when it
-- can admit (concurrency: when enough leases expire, unless released before);
-- {REFUSED, rule index, kind, reason, now µs}: the first rule that refuses ("exhausted": its policy is
-- fail; "oversize": the reservation is larger than the whole budget). Kind: concurrency, rate,
-- tokens or cost_usd. Nothing is written unless ADMITTED.

local ADMITTED, DEFERRED, REFUSED = 7, 8, 9  -- Reply in stores/redis/scripts.py

local holder, lease = ARGV[1], tonumber(ARGV[2])
local want_t, want_c = tonumber(ARGV[3]), tonumber(ARGV[4])
local now_us, injected
if ARGV[5] == '' then
  local t = redis.call('TIME')
  now_us = t[1] * 1000000 + t[2]
else
  now_us, injected = tonumber(ARGV[5]) * 1000, true
end
local now = math.floor(now_us / 1000)
local live_from = '(' .. now  -- a lease expiring at now has ended

local again = tonumber(redis.call('ZSCORE', KEYS[1], holder))
if again and again > now then return {ADMITTED, 1, now_us} end

local n = (#ARGV - 5) / 8
local refused, deferred, plan = nil, nil, {}

local function block(i, kind, fail, until_ms)
  if fail then
    if not refused then refused = {i, kind, 'exhausted'} end
  elseif not deferred or until_ms > deferred[3] then
    deferred = {i, kind, until_ms}
  end
end

local function check_budget(i, kind, fail, limit, want, spent, until_ms)
  if want > limit then
    if not refused then refused = {i, kind, 'oversize'} end
  elseif spent >= limit or spent + want > limit then
    block(i, kind, fail, until_ms)
  end
end

for i = 1, n do
  local a, k = 5 + (i - 1) * 8, 2 + (i - 1) * 3
  local fail = ARGV[a + 2] == '1'
  local conc, emit, tau = tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4]), tonumber(ARGV[a + 5])
  local tok, cost, win = tonumber(ARGV[a + 6]), tonumber(ARGV[a + 7]), tonumber(ARGV[a + 8])
  local p = {}
  plan[i] = p
  if conc then
    local live = redis.call('ZCOUNT', KEYS[k + 1], live_from, '+inf')
    if live >= conc then
      local next_free = redis.call('ZRANGEBYSCORE', KEYS[k + 1], live_from, '+inf', 'WITHSCORES', 'LIMIT',
        live - conc, 1)
      block(i, 'concurrency', fail, tonumber(next_free[2]))
    end
  end
  if emit then
    local tat = tonumber(redis.call('GET', KEYS[k + 2])) or now_us
    if tat < now_us then tat = now_us end
    if tat - now_us > tau then
      block(i, 'rate', fail, math.ceil((tat - tau) / 1000))
    else
      p.tat = tat + emit
    end
  end
  if tok or cost then
    local w = now - now % win
    local b = redis.call('HMGET', KEYS[k + 3], 'w', 't', 'c')
    p.w, p.t, p.c, p.fresh = w, 0, 0, tonumber(b[1]) ~= w
    if not p.fresh then p.t, p.c = tonumber(b[2]) or 0, tonumber(b[3]) or 0 end
    if tok then check_budget(i, 'tokens', fail, tok, want_t, p.t, w + win) end
    if cost then check_budget(i, 'cost_usd', fail, cost, want_c, p.c, w + win) end
  end
end

if refused then return {REFUSED, refused[1], refused[2], refused[3], now_us} end
if deferred then return {DEFERRED, deferred[1], deferred[2], deferred[3], now_us} end

local expiry = now + lease
-- Numbers go to Redis as they are (it writes integers in full); the reservation text joins values
-- below 1e14 (ms, tokens, micro-dollars), which Lua also writes in full.
local held = {}
for i = 1, n do
  local a, k, p = 5 + (i - 1) * 8, 2 + (i - 1) * 3, plan[i]
  if ARGV[a + 3] ~= '' then
    redis.call('ZADD', KEYS[k + 1], expiry, holder)
    held[#held + 1] = ARGV[a + 1]
  end
  if p.tat then
    if injected then
      redis.call('SET', KEYS[k + 2], p.tat)
    else
      redis.call('SET', KEYS[k + 2], p.tat, 'PX', math.ceil((p.tat - now_us) / 1000) + 1000)
    end
  end
  if p.w then
    -- the spend read above plus this reservation, written in one command
    local win, rt, rc = tonumber(ARGV[a + 8]), -1, -1
    if ARGV[a + 6] ~= '' then rt = want_t; p.t = p.t + rt end
    if ARGV[a + 7] ~= '' then rc = want_c; p.c = p.c + rc end
    redis.call('HSET', KEYS[k + 3], 'w', p.w, 't', p.t, 'c', p.c, 'l', win, 'r:' .. holder, rt .. ',' .. rc .. ',' .. p.w)
    -- the hash outlives its window by one more, and the reservations of a window's first admission
    if p.fresh and not injected then redis.call('PEXPIRE', KEYS[k + 3], 2 * win + lease) end
    if held[#held] ~= ARGV[a + 1] then held[#held + 1] = ARGV[a + 1] end
  end
end
if #held > 0 then redis.call('SADD', KEYS[2], unpack(held)) end
redis.call('ZADD', KEYS[1], expiry, holder)
return {ADMITTED, 0, now_us}
