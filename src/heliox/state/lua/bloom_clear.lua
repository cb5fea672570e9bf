-- Forget everything for one route. KEYS: the route's set of generation ids.
-- ARGV: the route's key base (a generation's bit array is base .. id, its count base .. id .. ':n').
local generations = redis.call('SMEMBERS', KEYS[1])
for _, g in ipairs(generations) do
  redis.call('DEL', ARGV[1] .. g, ARGV[1] .. g .. ':n')
end
redis.call('DEL', KEYS[1])
return #generations
