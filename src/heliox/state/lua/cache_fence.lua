-- Cluster only: raise this shard's fence (see bump_generation) for a removal in another shard,
-- so that no fill that began before it stores here either. ARGV: P, the fence.
bump_generation(ARGV[1], ARGV[2])
return 1
