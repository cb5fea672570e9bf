-- Entry count and serialised bytes, after forgetting (bounded) what has expired. ARGV: P.
local P = ARGV[1]
trim_expired(P, now_ms(), 1000)
return {redis.call('ZCARD', P .. 'i:all'), tonumber(redis.call('GET', P .. 'bytes') or '0')}
