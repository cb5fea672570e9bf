-- Remove one entry and its index memberships. ARGV: P, key, and on a cluster the fence (see
-- bump_generation). Returns 1 if it existed.
local P, member = ARGV[1], ARGV[2]
local entry_key = P .. 'e:' .. member
local existed = redis.call('EXISTS', entry_key)
remove_entry(P, member, read_index(entry_key))
bump_generation(P, ARGV[3])
return existed
