-- One more failed admin authentication from one client address (heliox/core/auth_throttle.py).
-- KEYS: 1 the address's failure count, 2 its lock-out marker (same hash tag).
-- ARGV: 1 max_failures, 2 base lock-out ms, 3 max lock-out ms.
-- Returns {failures in a row, lock-out ms (0: none)}. The count lives until max lock-out after
-- the lock-out (or the failure) ends, as `forget_at` says; the marker lives as long as the lock-out.
local failures = redis.call('INCR', KEYS[1])
local max_failures = tonumber(ARGV[1])
local max_ms = tonumber(ARGV[3])
local lock = 0
if failures >= max_failures then
  local doublings = failures - max_failures
  if doublings > 62 then doublings = 62 end
  lock = math.floor(math.min(max_ms, tonumber(ARGV[2]) * 2 ^ doublings))
end
if lock > 0 then
  redis.call('SET', KEYS[2], failures, 'PX', lock)
end
redis.call('PEXPIRE', KEYS[1], lock + max_ms)
return {failures, lock}
