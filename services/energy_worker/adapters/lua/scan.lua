-- One step of the router's sweep: SCAN from the cursor ARGV[6] (COUNT ARGV[7]), and the names
-- of one side, read as route() reads them: ARGV[8] 'legal' (what the router routes or follows:
-- not our own keys, not the webhook's self-test) or 'illegal'. A name longer than any legal one
-- is never returned, so that the router never receives it: the 'illegal' side routes (rejects)
-- it here. Filtered here, a flood of junk costs the router nothing while it looks for the legal
-- keys. KEYS: as route.lua's, without the key (the keys scanned are the database's: it is ours and
-- the webhook's alone). Returns {next cursor, names, {excerpt, length, reason} of each long name
-- rejected}.
local W, P, SEQ, EPOCH, DL, RJ = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
--#include route_lib.lua
local found = redis.call('SCAN', ARGV[6], 'COUNT', ARGV[7])
local want_illegal = ARGV[8] == 'illegal'
local names, long = {}, {}
for _, name in ipairs(found[2]) do
  if #name > max_name then
    if want_illegal and string.sub(name, 1, #own) ~= own then
      local result = route(name)
      if result[1] == 'rejected' then
        table.insert(long, {printable(name), #name, result[2]})
      end
    end
  else
    local kind = classify(name)
    if (kind == K.ILLEGAL) == want_illegal and kind ~= K.OWN and kind ~= K.FOO then
      table.insert(names, name)
    end
  end
end
return {found[1], names, long}
