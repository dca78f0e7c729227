-- The router's reading of a key, shared by the scripts that route (route.lua, scan.lua): route(key)
-- reads its name and value as core/keys.py does, and either moves it onto the list for its kind as a
-- numbered item, removes it with a copy and the reason in the dead-letter list, or leaves it
-- (the webhook's debug switch and self-test, our own keys). A rejected key also leaves a
-- numbered item of kind 'r' (value: the preview, with the reason and the printable key) on the
-- work list, so that the processor keeps it in PostgreSQL exactly once. A name or a value longer
-- than any legal one is rejected by its length, read without reading the whole of it (STRLEN,
-- GETRANGE), and so is a key of another type (only its size is shown). A `pushtogoogle` while
-- a request waits on the push list joins it: the pusher reads the readings when it takes it.
-- The scripts set W, P, SEQ, EPOCH, DL, RJ (the work, push and dead-letter lists, the counters)
-- from their KEYS; ARGV[1..10]: now_ms, epoch candidate, ',<meter>,...,' (the configured
-- meters), dead-letter cap, preview bytes, max millis, max metercount, our own prefix, max name
-- length, max value length.
-- route() returns {'routed', kind, seq} | {'joined', 'g'} | {'rejected', reason, preview} |
-- {'left', kind[, value]} | {'gone'}: a debug key is left with its value, for the router.
local now, meters = tonumber(ARGV[1]), ARGV[3]
local cap, preview_bytes, own = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[8]
local max_name, max_value = tonumber(ARGV[9]), tonumber(ARGV[10])
local limits = {t = ARGV[6], c = ARGV[7]}
local flags = {powerup = 'p', stop = 'x', pushtogoogle = 'g', debug = 'debug', foo = 'foo'}
local channels = {timestamp = 't', metercount = 'c'}
local sizes = {list = 'LLEN', set = 'SCARD', zset = 'ZCARD', hash = 'HLEN', stream = 'XLEN'}

local function printable(s)
  s = string.sub(s, 1, preview_bytes)
  return (string.gsub(s, '[^\32-\126]', function(c)
    return string.format('\\x%02x', string.byte(c)) end))
end

local function too_long(what, length, limit)
  return what .. ' is ' .. length .. ' bytes long (a legal one is at most ' .. limit .. ')'
end

-- keys.classify: kind, meter, reason
local function classify(name)
  if string.sub(name, 1, #own) == own then return 'own' end
  if #name > max_name then return 'illegal', nil, too_long('name', #name, max_name) end
  if string.find(name, '[\128-\255]') then return 'illegal', nil, 'unknown key' end
  local lower = string.lower(name)
  if flags[lower] then return flags[lower] end
  local n, word = string.match(lower, '^chann?el:(%d+):(%l+)$')
  local kind = word and channels[word]
  if not kind then return 'illegal', nil, 'unknown key' end
  if #n > 1 and string.sub(n, 1, 1) == '0' then
    return 'illegal', nil, 'meter number with a leading zero'
  end
  if n == '0' or #n > 2 then return 'illegal', nil, 'unknown key' end
  if not string.find(meters, ',' .. n .. ',', 1, true) then
    return 'illegal', n, 'meter ' .. n .. ' is not configured'
  end
  return kind, n
end

-- keys.value_problem (after the length, checked before the value is read): nil when legal
local function value_problem(kind, value)
  local limit = limits[kind]
  if limit then
    if not string.match(value, '^%d+$') then return 'value is not a whole number' end
    local digits = string.gsub(value, '^0+', '')
    if #digits > #limit or (tonumber(digits) or 0) > tonumber(limit) then
      return 'value is above ' .. limit
    end
    return nil
  end
  local lower = string.lower(value)
  if kind == 'debug' then
    if lower == 'true' or lower == 'false' then return nil end
    return "value is not 'true' or 'false'"
  end
  if lower ~= 'true' then return "value is not 'true'" end
  return nil
end

-- What a rejected key held, bounded: a string's first bytes, another type's size.
local function preview_of(key, ktype)
  if ktype == 'string' then
    return printable(redis.call('GETRANGE', key, 0, preview_bytes - 1))
  end
  local size = sizes[ktype]
  if size then return ktype .. ' of ' .. redis.call(size, key) .. ' item(s)' end
  return ktype
end

-- The next item's epoch and sequence number.
local function numbered()
  local epoch = redis.call('GET', EPOCH)
  if not epoch then
    epoch = ARGV[2]
    redis.call('SET', EPOCH, epoch)
  end
  return epoch, redis.call('INCR', SEQ)
end

local function route(key)
  local ktype = redis.call('TYPE', key).ok
  if ktype == 'none' then return {'gone'} end
  local kind, meter, reason = classify(key)
  if kind == 'own' or kind == 'foo' then return {'left', kind} end
  local value = nil
  if reason == nil then
    if ktype ~= 'string' then
      reason = 'key holds a Redis ' .. ktype .. ', not a string'
    else
      local length = redis.call('STRLEN', key)
      if length > max_value then
        reason = too_long('value', length, max_value)
      else
        value = redis.call('GET', key)
        reason = value_problem(kind, value)
      end
    end
  end
  if reason == nil and kind == 'debug' then return {'left', kind, value} end
  if reason ~= nil then
    local preview = preview_of(key, ktype)
    local shown = printable(key)
    redis.call('DEL', key)
    local entry = cjson.encode({key = shown, value = preview, reason = reason, at = now})
    redis.call('LPUSH', DL, entry)
    redis.call('LTRIM', DL, 0, cap - 1)
    redis.call('INCR', RJ)
    local epoch, seq = numbered()
    redis.call('RPUSH', W, cjson.encode(
      {e = epoch, s = seq, k = 'r', v = preview, reason = reason, at = now, key = shown}))
    return {'rejected', reason, preview}
  end
  if kind == 'g' and redis.call('LLEN', P) > 0 then
    redis.call('DEL', key)
    return {'joined', kind}
  end
  local epoch, seq = numbered()
  local item = {e = epoch, s = seq, k = kind, v = value, at = now, key = key}
  if meter then item.m = tonumber(meter) end
  local destination = W
  if kind == 'g' then destination = P end
  redis.call('RPUSH', destination, cjson.encode(item))
  redis.call('DEL', key)
  return {'routed', kind, seq}
end
