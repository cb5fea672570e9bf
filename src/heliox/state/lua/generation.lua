-- The cache's removal generation on a Redis Cluster, where it is a key of its own (outside
-- every shard and every principal's hash tag). KEYS[1]: the generation.
-- ARGV[1]: 'read' (return it), 'bump' (raise it and return the new value), or 'atleast' (raise
-- it to ARGV[2] if below, return it), as {value}.
-- A missing counter (first use, or Redis lost it) starts from Redis's clock in microseconds, as
-- cache_common.lua's bump_generation and admit.lua start it: above any value it held before.
local g = redis.call('GET', KEYS[1])
if not g then
  local t = redis.call('TIME')
  g = string.format('%d', tonumber(t[1]) * 1000000 + tonumber(t[2]))
  redis.call('SET', KEYS[1], g)
end
if ARGV[1] == 'atleast' then
  if tonumber(g) < tonumber(ARGV[2]) then
    redis.call('SET', KEYS[1], ARGV[2])
    g = ARGV[2]
  end
elseif ARGV[1] == 'bump' then
  return {string.format('%d', redis.call('INCR', KEYS[1]))}
end
return {g}
