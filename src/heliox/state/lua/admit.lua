-- Admission for one request: soft block, then rate limit, then quotas; writes only if all pass.
-- The rate arithmetic repeats heliox/core/ratelimit.py operation for operation, in doubles, so
-- Redis and memory decide bit for bit alike. Times are integer microseconds.
-- KEYS: block key, then the rate key (if ARGV[2] ~= ''), the daily counter (if ARGV[7] ~= ''),
--       the monthly counter (if ARGV[10] ~= ''); all under the principal's hash tag.
-- ARGV: 1 now_us override ('' = Redis TIME; tests only), 2 algorithm ('' | 'tb' | 'sw'),
--       3 rate, 4 limit (burst, or requests per window), 5 window_us, 6 cost,
--       7 daily quota, 8 daily period start_us, 9 its end_us,
--       10 monthly quota, 11 monthly start_us, 12 its end_us,
--       13 rate-state TTL margin ms, 14 quota TTL margin ms,
--       15 '1' when the last KEY is the cache's removal generation (cache_common.lua), '' if not.
-- Returns {status, now_us, ...}:
--   'period'                       the caller guessed the wrong quota period: recompute, call again
--   'blocked', until_us
--   'ok' | 'rate' | 'daily_quota' | 'monthly_quota',
--        limit, remaining, reset_after, retry_after, daily_used, monthly_used
--   and after 'ok', with ARGV[15], the cache generation (created if missing): read in the same round
--   trip, before the request reads the cache, so a copy of an entry kept in process is only
--   served while no removal has happened since it was read.
local US = 1000000
local EPS = 1e-9

local function fmt(x)
  return string.format('%.17g', x)
end

local now
if ARGV[1] ~= '' then
  now = tonumber(ARGV[1])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * US + tonumber(t[2])
end

local alg = ARGV[2]
local rate = tonumber(ARGV[3])
local limit = tonumber(ARGV[4])
local window = tonumber(ARGV[5])
local cost = tonumber(ARGV[6])
local dq = tonumber(ARGV[7])
local mq = tonumber(ARGV[10])
local k = 2
local rkey, dkey, mkey
if alg ~= '' then rkey = KEYS[k]; k = k + 1 end
if dq then dkey = KEYS[k]; k = k + 1 end
if mq then mkey = KEYS[k] end

-- Quota periods follow a time zone, which Lua cannot do: the caller names the period it expects
-- and we check that Redis's clock agrees before touching anything.
if (dq and (now < tonumber(ARGV[8]) or now >= tonumber(ARGV[9])))
    or (mq and (now < tonumber(ARGV[11]) or now >= tonumber(ARGV[12]))) then
  return {'period', fmt(now)}
end

local until_us = tonumber(redis.call('GET', KEYS[1]) or '')
if until_us and until_us > now then
  return {'blocked', fmt(now), fmt(until_us)}
end

local dused, mused = 0, 0
if dq then dused = tonumber(redis.call('GET', dkey) or '0') end
if mq then mused = tonumber(redis.call('GET', mkey) or '0') end

-- core.ratelimit.token_bucket
local function token_bucket(tokens, ts, c)
  local cap = limit
  if tokens == nil or ts == nil then
    tokens = cap
    ts = now
  elseif now > ts then
    tokens = math.min(cap, tokens + (now - ts) * rate / US)
    ts = now
  end
  local allowed = tokens + EPS >= c
  if allowed then
    tokens = tokens - c
    if tokens < 0 then tokens = 0 end
  end
  local need = allowed and 1 or c
  local retry = 0
  if not (tokens + EPS >= need) then retry = (need - tokens) / rate end
  local remaining = math.floor(tokens + EPS)
  return allowed, remaining, (cap - tokens) / rate, retry, {tokens, ts}
end

-- core.ratelimit.sliding_window
local function sliding_window(w, p, c0, c)
  local idx = math.floor(now / window)
  -- now / window is rounded; settle the floor exactly (the products are exact integers).
  if idx * window > now then
    idx = idx - 1
  elseif (idx + 1) * window <= now then
    idx = idx + 1
  end
  local prev, cur
  if w == nil or p == nil or c0 == nil then
    prev, cur = 0, 0
  elseif idx == w then
    prev, cur = p, c0
  elseif idx == w + 1 then
    prev, cur = c0, 0
  elseif idx > w then
    prev, cur = 0, 0
  else
    idx, prev, cur = w, p, c0
  end
  local into = now - idx * window
  if into < 0 then into = 0 end
  local left = window - into
  local estimate = prev * left / window + cur
  local allowed = estimate + c <= limit + EPS
  if allowed then
    cur = cur + c
    estimate = estimate + c
  end
  local need = allowed and 1 or c
  local retry
  if estimate + need <= limit + EPS then
    retry = 0
  elseif cur + need <= limit then
    retry = (left - (limit - need - cur) * window / prev) / US
  elseif need <= limit then
    retry = (left + (window - (limit - need) * window / cur)) / US
  else
    retry = math.huge
  end
  local reset
  if cur > 0 then
    reset = (left + window) / US
  elseif prev > 0 then
    reset = left / US
  else
    reset = 0
  end
  local remaining = math.floor(limit - estimate + EPS)
  if remaining < 0 then remaining = 0 end
  return allowed, remaining, reset, retry, {idx, prev, cur}
end

local state = nil
local function decide(c)
  if alg == 'tb' then
    local s = redis.call('HMGET', rkey, 't', 'ts')
    return token_bucket(tonumber(s[1] or ''), tonumber(s[2] or ''), c)
  end
  local s = redis.call('HMGET', rkey, 'w', 'p', 'c')
  return sliding_window(tonumber(s[1] or ''), tonumber(s[2] or ''), tonumber(s[3] or ''), c)
end

local allowed, remaining, reset, retry = true, 0, 0, 0
local shown_limit = 0
if alg ~= '' then
  shown_limit = limit
  allowed, remaining, reset, retry, state = decide(cost)
  if not allowed then
    return {'rate', fmt(now), shown_limit, remaining, fmt(reset), fmt(retry), dused, mused}
  end
end

local refused = nil
if dq and dused + cost > dq then
  refused = 'daily_quota'
elseif mq and mused + cost > mq then
  refused = 'monthly_quota'
end
if refused then
  -- No token was taken: report the limiter as it stands (a zero-cost look).
  if alg ~= '' then
    local _
    _, remaining, reset, retry = decide(0)
  end
  return {refused, fmt(now), shown_limit, remaining, fmt(reset), fmt(retry), dused, mused}
end

local state_margin = tonumber(ARGV[13])
if alg == 'tb' then
  redis.call('HSET', rkey, 't', fmt(state[1]), 'ts', fmt(state[2]))
  -- Once full again the bucket equals a missing one.
  redis.call('PEXPIRE', rkey, math.ceil((limit - state[1]) / rate * 1000) + state_margin)
elseif alg == 'sw' then
  redis.call('HSET', rkey, 'w', fmt(state[1]), 'p', state[2], 'c', state[3])
  -- Past the window after this one both counts are history.
  redis.call('PEXPIRE', rkey, math.ceil(((state[1] + 2) * window - now) / 1000) + state_margin)
end
local quota_margin = tonumber(ARGV[14])
if dq then
  dused = redis.call('INCRBY', dkey, cost)
  redis.call('PEXPIRE', dkey, math.ceil((tonumber(ARGV[9]) - now) / 1000) + quota_margin)
end
if mq then
  mused = redis.call('INCRBY', mkey, cost)
  redis.call('PEXPIRE', mkey, math.ceil((tonumber(ARGV[12]) - now) / 1000) + quota_margin)
end
if ARGV[15] == '1' then
  local generation = redis.call('GET', KEYS[#KEYS])
  if not generation then
    -- First use, or Redis lost its data: start above any value it can have held (see
    -- cache_common.lua's bump_generation), so copies read before the loss never match again.
    generation = string.format('%d', now)
    redis.call('SET', KEYS[#KEYS], generation, 'NX')
  end
  return {'ok', fmt(now), shown_limit, remaining, fmt(reset), fmt(retry), dused, mused, generation}
end
return {'ok', fmt(now), shown_limit, remaining, fmt(reset), fmt(retry), dused, mused}
