-- This period's quota counters of one principal (read-only).
-- KEYS: daily counter, monthly counter.
-- ARGV: 1 now_us override ('' = Redis TIME; tests only), 2 daily start_us, 3 daily end_us,
--       4 monthly start_us, 5 monthly end_us.
-- Returns {'period', now_us} when the caller guessed the wrong periods, else
-- {'ok', now_us, daily_used, monthly_used}.
local now
if ARGV[1] ~= '' then
  now = tonumber(ARGV[1])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
if now < tonumber(ARGV[2]) or now >= tonumber(ARGV[3])
    or now < tonumber(ARGV[4]) or now >= tonumber(ARGV[5]) then
  return {'period', string.format('%.17g', now)}
end
local d = tonumber(redis.call('GET', KEYS[1]) or '0')
local m = tonumber(redis.call('GET', KEYS[2]) or '0')
return {'ok', string.format('%.17g', now), d, m}
