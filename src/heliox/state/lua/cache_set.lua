-- Store one entry and index it.
-- ARGV: P, key, blob, ttl_ms, size, route, uri key, tenant ('' for shared), tag...
local P, member = ARGV[1], ARGV[2]
local entry_key = P .. 'e:' .. member
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
for i = 9, #ARGV do
  index(P .. 'i:g:' .. ARGV[i])
end
return 1
