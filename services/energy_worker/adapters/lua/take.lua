-- Moves up to ARGV[1] items, counting those already there, from the head of the work list to
-- the processing list, and returns the processing list's first ARGV[1] items.
local limit = tonumber(ARGV[1])
local want = limit - redis.call('LLEN', KEYS[2])
while want > 0 do
  local chunk = redis.call('LRANGE', KEYS[1], 0, math.min(want, 1000) - 1)
  if #chunk == 0 then break end
  redis.call('LTRIM', KEYS[1], #chunk, -1)
  redis.call('RPUSH', KEYS[2], unpack(chunk))
  want = want - #chunk
end
return redis.call('LRANGE', KEYS[2], 0, limit - 1)
