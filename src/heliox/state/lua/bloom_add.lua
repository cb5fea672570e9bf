-- Add an item to the current generation.
-- KEYS: bit array, its item count, the route's set of generation ids.
-- ARGV: capacity, ttl_ms (two rotations), generation id, bit positions...
-- Returns 1 when added, 0 when it was already there, -1 when the generation is full (a full
-- generation takes no more items, so its false-positive rate never exceeds the sized one).
local count = tonumber(redis.call('GET', KEYS[2]) or '0')
if count >= tonumber(ARGV[1]) then
  return -1
end
local new = false
for i = 4, #ARGV do
  if redis.call('SETBIT', KEYS[1], ARGV[i], 1) == 0 then
    new = true
  end
end
if not new then
  return 0
end
local ttl = ARGV[2]
if redis.call('INCR', KEYS[2]) == 1 then
  -- First item of a new generation: forget the ids of generations no lookup reads any more.
  local current = tonumber(ARGV[3])
  for _, g in ipairs(redis.call('SMEMBERS', KEYS[3])) do
    if tonumber(g) < current - 1 then
      redis.call('SREM', KEYS[3], g)
    end
  end
end
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('PEXPIRE', KEYS[2], ttl)
redis.call('SADD', KEYS[3], ARGV[3])
redis.call('PEXPIRE', KEYS[3], ttl)
return 1
