-- Is an item in either live generation? KEYS: current and previous generation bit arrays.
-- ARGV: the item's bit positions. Returns 1 when every position is set in one generation.
for _, key in ipairs(KEYS) do
  local all = true
  for i = 1, #ARGV do
    if redis.call('GETBIT', key, ARGV[i]) == 0 then
      all = false
      break
    end
  end
  if all then
    return 1
  end
end
return 0
