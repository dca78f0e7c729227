-- Starts a new epoch, unless another process did so meanwhile. KEYS: epoch; ARGV: old, new
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2])
  return 1
end
return 0
