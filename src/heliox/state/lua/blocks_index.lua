-- The list of blocks in force, for the admin UI: a sorted set (subject by until_us) and a hash
-- (subject -> info JSON), both under one hash tag. Lapsed entries are pruned on every call.
-- KEYS: the sorted set, the info hash.
-- ARGV: 1 'add' | 'remove' | 'list', 2 now_us override ('' = Redis TIME; tests only),
--       3 subject, 4 until_us, 5 info JSON, 6 TTL margin ms.
-- Returns {now_us} for add/remove; {now_us, subject, until_us, info, ...} soonest first for list.
local now
if ARGV[2] ~= '' then
  now = tonumber(ARGV[2])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local op = ARGV[1]
local lapsed = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, 500)
for _, subject in ipairs(lapsed) do
  redis.call('ZREM', KEYS[1], subject)
  redis.call('HDEL', KEYS[2], subject)
end
if op == 'add' then
  redis.call('ZADD', KEYS[1], ARGV[4], ARGV[3])
  redis.call('HSET', KEYS[2], ARGV[3], ARGV[5])
elseif op == 'remove' then
  redis.call('ZREM', KEYS[1], ARGV[3])
  redis.call('HDEL', KEYS[2], ARGV[3])
end
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
if #last == 0 then
  redis.call('DEL', KEYS[1], KEYS[2])
else
  -- Both keys live until the last block lapses.
  local ttl = math.ceil((tonumber(last[2]) - now) / 1000) + tonumber(ARGV[6])
  redis.call('PEXPIRE', KEYS[1], ttl)
  redis.call('PEXPIRE', KEYS[2], ttl)
end
local out = {string.format('%.17g', now)}
if op == 'list' then
  -- (tostring would round now to 14 digits; format it exactly)
  local all = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. string.format('%.17g', now), '+inf',
    'WITHSCORES')
  for i = 1, #all, 2 do
    out[#out + 1] = all[i]
    out[#out + 1] = all[i + 1]
    out[#out + 1] = redis.call('HGET', KEYS[2], all[i]) or '{}'
  end
end
return out
