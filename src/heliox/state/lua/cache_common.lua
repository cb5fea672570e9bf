-- Shared head of the cache_*.lua scripts (heliox.state.cache_redis prepends it to each).
--
-- Layout under prefix P:
--   P e:<key>         the entry: 'HXC1' | u32 index-len | u32 meta-len | index JSON | meta | body
--   P i:all           zset of every key, score = expiry (ms, Redis clock)
--   P i:r:<route>  P i:u:<uri key>  P i:t:<tenant>  P i:g:<tag>
--                     zsets of keys per dimension, same scores, TTL >= their latest member
--   P sz              hash key -> serialised size;  P bytes   the sum of those sizes
-- Index keys are derived from P and the entry's own index JSON, so a standalone Redis (not a
-- cluster) is assumed.

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- The entry's index fields {r=route, u=uri key, p=path, t=tenant|null, g={tags}}, or nil when
-- the key is missing or holds something else.
local function read_index(entry_key)
  local head = redis.call('GETRANGE', entry_key, 0, 11)
  if #head < 12 or string.sub(head, 1, 4) ~= 'HXC1' then
    return nil
  end
  local n = struct.unpack('>I4', head, 5)
  if n == 0 then
    return nil
  end
  local ok, meta = pcall(cjson.decode, redis.call('GETRANGE', entry_key, 12, 11 + n))
  if not ok or type(meta) ~= 'table' or type(meta.r) ~= 'string' or type(meta.u) ~= 'string'
      or type(meta.p) ~= 'string' then
    return nil
  end
  if type(meta.t) ~= 'string' then
    meta.t = nil
  end
  if type(meta.g) ~= 'table' then
    meta.g = {}
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
