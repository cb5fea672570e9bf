-- Set or lift the soft block of one principal (the key admit.lua checks).
-- KEYS: the block key. ARGV: 1 'set' | 'del', 2 now_us override ('' = Redis TIME; tests only),
--       3 until_us (for 'set').
-- Returns {now_us, 1 if a block was in force before this call else 0}.
local now
if ARGV[2] ~= '' then
  now = tonumber(ARGV[2])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local old = tonumber(redis.call('GET', KEYS[1]) or '')
local was = 0
if old and old > now then was = 1 end
local until_us = tonumber(ARGV[3] or '')
if ARGV[1] == 'set' and until_us and until_us > now then
  -- The value is authoritative (admit compares it with now); the TTL only cleans up.
  redis.call('SET', KEYS[1], ARGV[3], 'PX', math.ceil((until_us - now) / 1000))
else
  redis.call('DEL', KEYS[1])
end
return {string.format('%.17g', now), was}
