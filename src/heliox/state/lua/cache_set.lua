-- Store one entry and index it, unless entries were removed since the caller read the removal
-- generation (a fill that started before a write must not store the old answer). Returns 1 when
-- stored, 0 when the generation moved.
-- ARGV: P, key, blob, ttl_ms, size, route, uri key, tenant ('' for shared), generation ('' for
-- no check; on a cluster '>' .. generation: refused when the shard's fence is above it), n, then
-- n keys to drop (variants their index no longer holds: removed without moving the
-- generation), then tag...
local P, member = ARGV[1], ARGV[2]
local entry_key = P .. 'e:' .. member
local expected = ARGV[9]
if string.sub(expected, 1, 1) == '>' then
  local fence = tonumber(redis.call('GET', P .. 'gen') or '0')
  if fence > tonumber(string.sub(expected, 2)) then
    return 0
  end
elseif expected ~= '' and redis.call('GET', P .. 'gen') ~= expected then
  return 0
end
local dropped = tonumber(ARGV[10])
for i = 11, 10 + dropped do
  if ARGV[i] ~= member then
    local gone = P .. 'e:' .. ARGV[i]
    remove_entry(P, ARGV[i], read_index(gone))
  end
end
local ttl = tonumber(ARGV[4])
local now = now_ms()
local expiry = now + ttl

-- An overwrite may change route, tenant or tags: leave no stale index membership behind.
local old = read_index(entry_key)
if old then
  unindex(P, member, old)
end
redis.call('SET', entry_key, ARGV[3], 'PX', ttl)

local previous = tonumber(redis.call('HGET', P .. 'sz', member) or '0')
redis.call('HSET', P .. 'sz', member, ARGV[5])
redis.call('INCRBY', P .. 'bytes', tonumber(ARGV[5]) - previous)
redis.call('ZADD', P .. 'i:all', expiry, member)
trim_expired(P, now, 64)

local function index(key)
  redis.call('ZADD', key, expiry, member)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  if redis.call('PTTL', key) < ttl then
    redis.call('PEXPIRE', key, ttl)
  end
end

index(P .. 'i:r:' .. ARGV[6])
index(P .. 'i:u:' .. ARGV[7])
if ARGV[8] ~= '' then
  index(P .. 'i:t:' .. ARGV[8])
end
for i = 11 + dropped, #ARGV do
  index(P .. 'i:g:' .. ARGV[i])
end
return 1
