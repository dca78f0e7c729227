-- The router's reading of a key, shared by the scripts that route (route.lua, scan.lua): route(key)
-- reads its name and value as core/keys.py does, and either moves it onto the list for its kind as a
-- numbered item, removes it with a copy and the reason in the dead-letter list, or leaves it
-- (the webhook's debug switch and self-test, our own keys). A rejected key also leaves a
-- numbered item of kind REJECTED (value: the preview, with the reason and the printable key) on the
-- work list, so that the processor keeps it in PostgreSQL exactly once. A name or a value longer
-- than any legal one is rejected by its length, read without reading the whole of it (STRLEN,
-- GETRANGE), and so is a key of another type (only its size is shown). A `pushtogoogle` while
-- a request waits on the push list joins it: the pusher reads the readings when it takes it.
-- The rules are core/keys.py's, as a table: `rules` is rendered from keys.rules() where the line
-- below stands, when the script is loaded (adapters/work_queue.py); this code applies it and
-- restates none of it (no name, kind, limit or reason is written here).
--#rules
-- The scripts set W, P, SEQ, EPOCH, DL, RJ (the work, push and dead-letter lists, the counters)
-- from their KEYS; ARGV[1..5]: now_ms, epoch candidate, ',<meter>,...,' (the configured
-- meters), dead-letter cap, preview bytes.
-- route() returns {'routed', kind, seq} | {'joined', kind} | {'rejected', reason, preview} |
-- {'left', kind[, value]} | {'gone'}: a debug key is left with its value, for the router.
local now, meters = tonumber(ARGV[1]), ARGV[3]
local cap, preview_bytes, own = tonumber(ARGV[4]), tonumber(ARGV[5]), rules.own
local max_name, max_value = rules.max_name, rules.max_value
local K, reasons = rules.kinds, rules.reasons
local sizes = {list = 'LLEN', set = 'SCARD', zset = 'ZCARD', hash = 'HLEN', stream = 'XLEN'}

local function printable(s)
  s = string.sub(s, 1, preview_bytes)
  return (string.gsub(s, '[^\32-\126]', function(c)
    return string.format('\\x%02x', string.byte(c)) end))
end

local function too_long(what, length, limit)
  return string.format(reasons.too_long, what, length, limit)
end

-- keys.classify: kind, meter, reason
local function classify(name)
  if string.sub(name, 1, #own) == own then return K.OWN end
  if #name > max_name then return K.ILLEGAL, nil, too_long('name', #name, max_name) end
  if string.find(name, '[\128-\255]') then return K.ILLEGAL, nil, reasons.unknown end
  local lower = string.lower(name)
  if rules.flags[lower] then return rules.flags[lower] end
  local spelling, n, word = string.match(lower, '^(%l+):(%d+):(%l+)$')
  local kind = spelling and rules.spellings[spelling] and rules.channels[word]
  if not kind then return K.ILLEGAL, nil, reasons.unknown end
  if #n > 1 and string.sub(n, 1, 1) == '0' then return K.ILLEGAL, nil, reasons.leading_zero end
  if #n > rules.meter_digits or tonumber(n) < 1 or tonumber(n) > rules.max_meter then
    return K.ILLEGAL, nil, reasons.unknown
  end
  if not string.find(meters, ',' .. n .. ',', 1, true) then
    return K.ILLEGAL, n, string.format(reasons.not_configured, n)
  end
  return kind, n
end

-- keys.value_problem (after the length, checked before the value is read): nil when legal
local function value_problem(kind, value)
  local limit = rules.limits[kind]
  if limit then
    if not string.match(value, '^%d+$') then return reasons.not_whole end
    local digits = string.gsub(value, '^0+', '')
    if #digits > #limit or (tonumber(digits) or 0) > tonumber(limit) then
      return string.format(reasons.above, limit)
    end
    return nil
  end
  if rules.words[kind][string.lower(value)] then return nil end
  return rules.not_a_word[kind]
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
  if kind == K.OWN or kind == K.FOO then return {'left', kind} end
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
  if reason == nil and kind == K.DEBUG then return {'left', kind, value} end
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
      {e = epoch, s = seq, k = K.REJECTED, v = preview, reason = reason, at = now, key = shown}))
    return {'rejected', reason, preview}
  end
  if kind == K.PUSH and redis.call('LLEN', P) > 0 then
    redis.call('DEL', key)
    return {'joined', kind}
  end
  local epoch, seq = numbered()
  local item = {e = epoch, s = seq, k = kind, v = value, at = now, key = key}
  if meter then item.m = tonumber(meter) end
  local destination = W
  if kind == K.PUSH then destination = P end
  redis.call('RPUSH', destination, cjson.encode(item))
  redis.call('DEL', key)
  return {'routed', kind, seq}
end
