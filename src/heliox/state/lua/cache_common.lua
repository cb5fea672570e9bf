-- Shared head of the cache_*.lua scripts (heliox.state.cache_redis prepends it to each).
--
-- Layout under prefix P:
--   P e:<key>         the entry (heliox.state.cache_redis.encode_entry): a 68-byte fixed header
--                     '>4sHIdddddHHHHHII' (magic 'HXC3', status, age, five times, then the sizes of
--                     tenant, tag count, header count, route, uri key, path, index part), the index
--                     part (route, uri key, path, tenant, tag sizes as u16, tags), headers, body
--   P i:all           zset of every key, score = expiry (ms, Redis clock)
--   P i:r:<route>  P i:u:<uri key>  P i:t:<tenant>  P i:g:<tag>
--                     zsets of keys per dimension, same scores, TTL >= their latest member
--   P sz              hash key -> serialised size;  P bytes   the sum of those sizes
--   P gen             the removal generation: raised after every delete and purge step, read by
--                     admit.lua, so instances know when entries they keep in process may be gone,
--                     and by fills, which store only if it has not moved since they started
-- Index keys are derived from P and the entry's own index part: every key a script touches
-- starts with P. On a Redis Cluster, P carries a hash tag: the cache is split into shards, each
-- with all of the above under its own P (one hash slot per shard, the shards spread over the
-- masters). There P gen is the shard's removal fence instead: the value the global generation
-- (its own key, outside every shard) had when the latest removal in this shard began. See
-- heliox.state.cache_redis.

local FIXED = 68

-- After removing entries: any copy an instance read before now is suspect. A missing counter
-- (first use, or Redis lost its data) starts from Redis's clock in microseconds, above any value
-- it held before, so an instance's old copies can never match again.
-- On a cluster (`fence` given): raise the shard's fence to `fence` instead.
local function bump_generation(P, fence)
  local g = P .. 'gen'
  if fence and fence ~= '' then
    if tonumber(redis.call('GET', g) or '0') < tonumber(fence) then
      redis.call('SET', g, fence)
    end
    return
  end
  if redis.call('EXISTS', g) == 0 then
    local t = redis.call('TIME')
    redis.call('SET', g, string.format('%d', tonumber(t[1]) * 1000000 + tonumber(t[2])))
  end
  redis.call('INCR', g)
end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- The entry's index fields {r=route, u=uri key, p=path, t=tenant or nil, g={tags}}, or nil when
-- the key is missing or holds something else. Reads the head of the value, never the body.
local function read_index(entry_key)
  local head = redis.call('GETRANGE', entry_key, 0, FIXED - 1)
  if #head < FIXED or string.sub(head, 1, 4) ~= 'HXC3' then
    return nil
  end
  local tenant_len, tag_count, _, route_len, uri_len, path_len, index_len =
    struct.unpack('>HHHHHI4I4', head, 51)
  local part = ''
  if index_len > 0 then
    part = redis.call('GETRANGE', entry_key, FIXED, FIXED + index_len - 1)
  end
  if #part ~= index_len then
    return nil
  end
  local at = 1
  local function take(n)
    local s = string.sub(part, at, at + n - 1)
    at = at + n
    return s
  end
  local meta = {r = take(route_len), u = take(uri_len), p = take(path_len), g = {}}
  if tenant_len > 0 then
    meta.t = take(tenant_len)
  end
  local sizes = {}
  for i = 1, tag_count do
    sizes[i] = struct.unpack('>H', part, at)
    at = at + 2
  end
  for i = 1, tag_count do
    meta.g[i] = take(sizes[i])
  end
  return meta
end

local function unindex(P, member, meta)
  redis.call('ZREM', P .. 'i:r:' .. meta.r, member)
  redis.call('ZREM', P .. 'i:u:' .. meta.u, member)
  if meta.t then
    redis.call('ZREM', P .. 'i:t:' .. meta.t, member)
  end
  for _, tag in ipairs(meta.g) do
    redis.call('ZREM', P .. 'i:g:' .. tag, member)
  end
end

local function forget(P, member)
  local size = redis.call('HGET', P .. 'sz', member)
  if size then
    redis.call('HDEL', P .. 'sz', member)
    redis.call('DECRBY', P .. 'bytes', size)
  end
  redis.call('ZREM', P .. 'i:all', member)
end

local function remove_entry(P, member, meta)
  redis.call('DEL', P .. 'e:' .. member)
  if meta then
    unindex(P, member, meta)
  end
  forget(P, member)
end

-- Forget (bounded) the keys whose entries Redis has already expired.
local function trim_expired(P, now, limit)
  local gone = redis.call('ZRANGEBYSCORE', P .. 'i:all', '-inf', now, 'LIMIT', 0, limit)
  for _, member in ipairs(gone) do
    forget(P, member)
  end
  return #gone
end
