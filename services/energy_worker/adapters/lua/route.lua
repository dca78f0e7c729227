-- Routes one key. KEYS: key, work list, push list, seq, epoch, dead-letter list, rejected counter
local W, P, SEQ, EPOCH, DL, RJ = KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
--#include route_lib.lua
return route(KEYS[1])
