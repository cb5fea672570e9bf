-- Before an admin credential is checked: is the client address locked out, does it have a streak?
-- KEYS: 1 the address's failure count, 2 its lock-out marker. Returns {lock-out ms left, 0|1}.
local left = redis.call('PTTL', KEYS[2])
if left < 0 then left = 0 end
return {left, redis.call('EXISTS', KEYS[1])}
