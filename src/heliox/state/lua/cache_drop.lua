-- Cluster only: remove entries no longer reachable (the variants a variant index dropped, kept
-- in another shard than the index), without moving the fence: like cache_set.lua's drops.
-- ARGV: P, then the keys. Returns how many existed.
local P = ARGV[1]
local existed = 0
for i = 2, #ARGV do
  local entry_key = P .. 'e:' .. ARGV[i]
  existed = existed + redis.call('EXISTS', entry_key)
  remove_entry(P, ARGV[i], read_index(entry_key))
end
return existed
