-- Release a lock only if this owner still holds it (compare-and-delete).
-- KEYS[1]: the lock. ARGV[1]: the owner's token. Returns 1 when released, 0 when it was no
-- longer ours (it expired and someone else may hold it now: their lock must survive).
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
