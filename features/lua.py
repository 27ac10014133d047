"""Server-side scripts of the feature store (Lua, run by Redis / Valkey, standalone or Cluster).

Every call touches **one hash slot** and declares every key it touches in ``KEYS``: the keys are
built by :mod:`features.keys` (nowhere else) and share one hash tag, the bucket of the entities
the call is about (``{u.17}``: the users of bucket 17, their recommendations, that bucket's
funnel transitions and positions). :class:`features.client.FeatureClient` groups the events of
a batch by bucket, one call per bucket (up to ``SCRIPT_CHUNK`` events), all calls of a batch in
one pipeline (redis-py's cluster client sends each call to its slot's primary). No script reads
a key name from data: co-visitation pairs leave the user call as values and come back as keys in
their items' calls. Windows and retentions come in ``ARGV`` from the registry
(:mod:`features.definitions`, passed by :class:`features.store.FeaturePlans`).

Invariants kept here (key layout: :mod:`features.store`):

* each call is atomic, so a crash never leaves half of a bucket's events written;
* windowed members are keyed by the event's own id: re-running a call changes nothing;
* the counts that are not idempotent by construction (view counts per item in the bucket's
  popularity shard, funnel transitions, category counts, co-visitation weights) count an event
  only the first time it is applied, with no key per event: events from Kafka carry their
  position (``<topic>:<partition>``, offset) and each bucket keeps the newest offset it applied
  per partition (``ss:g:off:{tag}``); an event at or below it was applied to this bucket already
  (a partition is applied in offset order, so the applied events of a bucket are a prefix of
  the partition's). Events with no position (a replay from files, an offline snapshot) are new
  when the ``ZADD`` of their own windowed member adds it (the reply is 1);
* every structure is bounded: windows trimmed to their retention, the recent items and the
  category counts to their newest / largest few, popularity to the REC_POPULAR_KEEP most viewed
  items of each shard (Space-Saving), co-visitation to the COVIS_KEEP strongest neighbours, long-horizon sets
  to their cap;
* order reads run before that order's writes and count only members with score < ts; the orders
  of one entity are in one call, in event order;
* an order's verdict is recorded once (``SET NX``): a redelivered order gets the first verdict
  back and stores nothing; a label and its order's learn record meet exactly once, whichever
  comes first (RECORD_VERDICTS takes an early label, JOIN_LABELS takes a record).
"""

# -- shared pieces ---------------------------------------------------------------------------------
_POSITIONS = r"""
-- positions (KEYS[1]: field '<topic>:<partition>' -> newest applied offset): an event at (field,
-- offset) is new when offset > the stored value at the start of the call; stored at the end.
local pos_start, pos_new, pos_fields = {}, {}, {}
local function is_new(field, offset, added)
  if field == '' then return added end
  local start = pos_start[field]
  if start == nil then
    start = tonumber(redis.call('HGET', KEYS[1], field) or '-1')
    pos_start[field] = start
    pos_fields[#pos_fields + 1] = field
  end
  local o = tonumber(offset)
  if o <= start then return false end
  if o > (pos_new[field] or -1) then pos_new[field] = o end
  return true
end
local function store_positions(ttl)
  local any = false
  for _, f in ipairs(pos_fields) do
    if pos_new[f] then
      redis.call('HSET', KEYS[1], f, pos_new[f])
      any = true
    end
  end
  if any then redis.call('EXPIRE', KEYS[1], ttl) end
end
"""

_WINDOWS = r"""
-- windowed sets: trimmed once per key per call, to the newest ts in the call minus the retention
local win_max, win_keys = {}, {}
local function window_add(k, member, ts)
  local added = redis.call('ZADD', k, ts, member)
  local m = win_max[k]
  if m == nil then
    win_keys[#win_keys + 1] = k
    win_max[k] = ts
  elseif ts > m then
    win_max[k] = ts
  end
  return added == 1
end
local function trim_windows(ret, ttl)
  for _, k in ipairs(win_keys) do
    redis.call('ZREMRANGEBYSCORE', k, '-inf', string.format('(%.6f', win_max[k] - ret))
    redis.call('EXPIRE', k, ttl)
  end
end
"""


_BYTES_ORDER = r"""
-- a < b in byte order (memcmp, as Redis orders equal-score members): Lua's own '<' on strings
-- follows the server's locale
local function bytes_lt(a, b)
  local n = math.min(#a, #b)
  for j = 1, n do
    local x, y = string.byte(a, j), string.byte(b, j)
    if x ~= y then return x < y end
  end
  return #a < #b
end
"""

_DAY_FIELD = _BYTES_ORDER + r"""
-- an item's field in its bucket's day hash (CLICKS_ITEMS): 'event id<TAB>s into the day<TAB>...', listed by
-- event id (byte order), or 'S' (that day's clicks are in the item's sorted set); ids hold no control character
local function day_field_read(v)  -- event id -> s into the day (text), and how many; nil for 'S' or no field
  if not v or v == 'S' then return nil, 0 end
  local m, n, eid = {}, 0, nil
  for tok in string.gmatch(v, '[^\t]+') do
    if eid == nil then
      eid = tok
    else
      m[eid], n, eid = tok, n + 1, nil
    end
  end
  return m, n
end
local function day_field_text(m)
  local ids, parts = {}, {}
  for id in pairs(m) do ids[#ids + 1] = id end
  table.sort(ids, bytes_lt)
  for _, id in ipairs(ids) do
    parts[#parts + 1] = id
    parts[#parts + 1] = m[id]
  end
  return table.concat(parts, '\t')
end
"""

_FUNNEL_CODES = r"""
-- a user's funnel state is stored as one letter ('b' browse, 'c' cart, 'p' purchase: 5 bytes less per
-- user); a store written before holds the whole name, read as it is
local STATE_NAME, STATE_CODE = {b = 'browse', c = 'cart', p = 'purchase'}, {browse = 'b', cart = 'c', purchase = 'p'}
"""

CLICKS_USERS = _POSITIONS + _WINDOWS + _BYTES_ORDER + _FUNNEL_CODES + r"""
-- One user bucket. KEYS: 1 positions, 2 the bucket's funnel shard, then per distinct user 2: state
--   (HASH: s = funnel state (a letter), n = views with a category, 'c' .. category = that category's views,
--   'r' .. item = the newest ts the user viewed that item, 'e' .. action letter .. event id = the
--   event ts of a click of a small window, below), rec items; then the click windows the call writes
--   (c:<action> of a user).
-- ARGV: 1 ttl, 2 click retention s, 3 recent keep, 4 recent return, 5 cats keep, 6 covis ('1' = on),
--   7 covis window, 8 covis gap s, 9 users, 10 inline window max, 11 the clicks (JSON, one array each:
--   user number (0-based), its window's KEYS index, event id, item, action letter, action, ts, category
--   ('' = none), position field ('' = none), offset (a string: it goes back in the pairs as it came)).
--   JSON: one argument per call rather than ten per click (the client's cost is per argument).
-- Small windows inline: a user's clicks of one action live as 'e' fields of the user's hash while
--   they are at most `inline max` (most users click a few times: a sorted set of its own costs ~110
--   bytes more); the click that would make one more moves them all into the window's sorted set
--   (c:<action>), where that action's clicks stay while the set exists. Either way a member is the
--   event id with the event ts, trimmed to the retention: USER_CLICKS counts both.
-- Each user's hash is read once (HGETALL) and written once (HSET of what changed, HDEL of what was
--   trimmed) per call; the events of the call work on that copy, in order. The recent items are trimmed
--   to their `keep` newest and the category counts to the `cats keep` largest at the end of the call.
-- Returns, as one JSON text (the client decodes it in one C call instead of one bytes object per id),
--   [newest items of each user (newest first, by user number), [clicks on recommended items from a
--   model list, ... from a cold-start list], co-visitation pairs (flat: a, b, weight, ts, field,
--   offset, all strings)]; an empty list is written '{}' (cjson cannot tell an empty array from an
--   empty object). Pairs are returned for every click with a position (their items' calls dedupe
--   them) and for new clicks without one.
local ttl, ret, keep, ret_n, cats_keep = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]),
                                         tonumber(ARGV[4]), tonumber(ARGV[5])
local cv_on, cv_window, cv_gap = ARGV[6] == '1', tonumber(ARGV[7]), tonumber(ARGV[8])
local cv_weight = {}  -- the d-th previous view's weight, 1 / d as text (formatted once per call, not per pair)
for d = 1, cv_window do cv_weight[d] = string.format('%.17g', 1 / d) end
local STATE = {view = 'browse', add_to_cart = 'cart', remove_from_cart = 'browse', purchase = 'purchase'}
local hits, pairs_out, funnel = {0, 0}, {}, {}
local nusers, inline_max = tonumber(ARGV[9]), tonumber(ARGV[10])
local users = {}
local B_R, B_C, B_E = string.byte('r'), string.byte('c'), string.byte('e')
-- newest first: greater ts, then (equal ts) the greater id, as ZREVRANGE orders a sorted set
-- (items sorted by their ts in `by_ts`, a user's recent items: set before each sort, so no table is made per item)
local by_ts
local function newer(a, b)
  local ta, tb = by_ts[a], by_ts[b]
  return ta > tb or (ta == tb and bytes_lt(b, a))
end
local function user(u)
  local x = users[u + 1]
  if x then return x end
  x = {k = KEYS[3 + 2 * u], rec_k = KEYS[4 + 2 * u], recent = {}, nrecent = 0, cats = {}, ncats = 0,
       s = 'start', n = 0, set = {}, del = {}, changed = false, inline = {}, ninline = {}, spilled = {}, wmax = {}}
  local flat = redis.call('HGETALL', x.k)
  for j = 1, #flat, 2 do
    local f, v = flat[j], flat[j + 1]
    local c = string.byte(f)  -- a number: no one-letter string made per field
    if c == B_R then
      x.recent[string.sub(f, 2)] = tonumber(v)
      x.nrecent = x.nrecent + 1
    elseif c == B_C then
      x.cats[f] = tonumber(v)
      x.ncats = x.ncats + 1
    elseif c == B_E then
      local a = string.sub(f, 2, 2)
      if x.inline[a] == nil then x.inline[a], x.ninline[a] = {}, 0 end
      x.inline[a][string.sub(f, 3)] = v
      x.ninline[a] = x.ninline[a] + 1
    elseif f == 's' then x.s = STATE_NAME[v] or v
    elseif f == 'n' then x.n = tonumber(v)
    end
  end
  users[u + 1] = x
  return x
end
-- a click into the user's window of action letter a (sorted set k): true when the member is new
local function user_window_add(x, k, a, eid, ts, ts_s)
  -- inline clicks of the action and its sorted set never coexist (a spill moves them all), so the set is
  -- looked for only when the hash holds none
  if x.spilled[a] == nil then x.spilled[a] = (x.ninline[a] or 0) == 0 and redis.call('EXISTS', k) == 1 end
  if x.spilled[a] then return window_add(k, eid, ts) end
  if x.wmax[a] == nil or ts > x.wmax[a] then x.wmax[a] = ts end  -- the newest ts: the trim's reference
  if x.inline[a] == nil then x.inline[a], x.ninline[a] = {}, 0 end
  local inl = x.inline[a]
  if inl[eid] ~= nil then return false end
  if x.ninline[a] < inline_max then
    inl[eid] = ts_s
    x.ninline[a] = x.ninline[a] + 1
    x.set['e' .. a .. eid] = ts_s
    x.changed = true
    return true
  end
  local zargs = {}  -- spill: the inline members into the sorted set, then this one
  for m, t in pairs(inl) do
    zargs[#zargs + 1] = t
    zargs[#zargs + 1] = m
    x.set['e' .. a .. m] = nil
    x.del['e' .. a .. m] = true
  end
  redis.call('ZADD', k, unpack(zargs))
  x.inline[a], x.ninline[a], x.spilled[a], x.changed = {}, 0, true, true
  return window_add(k, eid, ts)
end
for _, e in ipairs(cjson.decode(ARGV[11])) do
  local x = user(e[1])
  local eid, item, letter, action, ts_s, cat, field, offset = e[3], e[4], e[5], e[6], e[7], e[8], e[9], e[10]
  local ts = tonumber(ts_s)
  local added = user_window_add(x, KEYS[e[2]], letter, eid, ts, ts_s)
  if action == 'view' then
    local old = x.recent[item]
    if old == nil or ts > old then
      if old == nil then x.nrecent = x.nrecent + 1 end
      x.recent[item] = ts
      x.set['r' .. item] = ts_s
      x.changed = true
    end
  end
  local new = is_new(field, offset, added)
  if cv_on and action == 'view' and (new or field ~= '') then
    -- pairs with the user's previous distinct views of the last cv_gap seconds, newest first
    local lo = tonumber(string.format('%.6f', ts - cv_gap))
    local prev = {}
    for it, t in pairs(x.recent) do
      if t < ts and t >= lo then prev[#prev + 1] = it end
    end
    by_ts = x.recent
    table.sort(prev, newer)
    local n = #pairs_out
    for d = 1, math.min(#prev, cv_window) do
      local p, w = prev[d], cv_weight[d]
      pairs_out[n + 1], pairs_out[n + 2], pairs_out[n + 3], pairs_out[n + 4], pairs_out[n + 5], pairs_out[n + 6] =
        p, item, w, ts_s, field, offset
      pairs_out[n + 7], pairs_out[n + 8], pairs_out[n + 9], pairs_out[n + 10], pairs_out[n + 11], pairs_out[n + 12] =
        item, p, w, ts_s, field, offset
      n = n + 12
    end
  end
  if new then
    if action == 'view' and cat ~= '' then
      local f = 'c' .. cat
      local c = x.cats[f]
      if c == nil then x.ncats = x.ncats + 1 end
      x.cats[f] = (c or 0) + 1
      x.set[f] = x.cats[f]
      x.n = x.n + 1
      x.set['n'] = x.n
    end
    if x.rec == nil then
      x.rec = {}
      local flat = redis.call('HGETALL', x.rec_k)
      for j = 1, #flat, 2 do x.rec[flat[j]] = flat[j + 1] end
    end
    local rec = x.rec[item]
    if rec then hits[rec == '1' and 2 or 1] = hits[rec == '1' and 2 or 1] + 1 end
    local to = STATE[action]
    local tr = x.s .. '>' .. to
    funnel[tr] = (funnel[tr] or 0) + 1
    x.s = to
    x.set['s'] = STATE_CODE[to]
    x.changed = true
  end
end
trim_windows(ret, ttl)
local any_transition = false
for tr, c in pairs(funnel) do
  redis.call('HINCRBY', KEYS[2], tr, c)
  any_transition = true
end
if any_transition then redis.call('EXPIRE', KEYS[2], ttl) end
local out = {}
for u = 0, nusers - 1 do
  local x = users[u + 1]
  local recent = {}
  for it in pairs(x.recent) do recent[#recent + 1] = it end
  by_ts = x.recent
  table.sort(recent, newer)
  if x.changed then
    local del = {}
    for f in pairs(x.del) do del[#del + 1] = f end
    for a, inl in pairs(x.inline) do  -- inline windows written in this call: trimmed as window_add's sets
      if x.wmax[a] then
        local cutoff = tonumber(string.format('%.6f', x.wmax[a] - ret))
        for m, t in pairs(inl) do
          if tonumber(t) < cutoff then
            local f = 'e' .. a .. m
            x.set[f] = nil
            del[#del + 1] = f
          end
        end
      end
    end
    for j = keep + 1, #recent do  -- the oldest beyond the keep newest
      local f = 'r' .. recent[j]
      x.set[f] = nil
      del[#del + 1] = f
      recent[j] = nil
    end
    if x.ncats > cats_keep then  -- keep the cats_keep largest category counts (ties: the smaller name)
      local cats = {}
      for f, c in pairs(x.cats) do cats[#cats + 1] = {f, c} end
      table.sort(cats, function(a, b) return a[2] > b[2] or (a[2] == b[2] and bytes_lt(a[1], b[1])) end)
      for j = cats_keep + 1, #cats do
        x.set[cats[j][1]] = nil
        del[#del + 1] = cats[j][1]
      end
    end
    local flat = {}
    for f, v in pairs(x.set) do
      flat[#flat + 1] = f
      flat[#flat + 1] = v
    end
    if #flat > 0 then redis.call('HSET', x.k, unpack(flat)) end
    if #del > 0 then redis.call('HDEL', x.k, unpack(del)) end
    redis.call('EXPIRE', x.k, ttl)
  end
  local items = {}
  for j = 1, math.min(ret_n, #recent) do items[j] = recent[j] end
  out[u + 1] = items
end
store_positions(ttl)
out[#out + 1] = hits
out[#out + 1] = pairs_out
return cjson.encode(out)
"""

CLICKS_ITEMS = _POSITIONS + _WINDOWS + _DAY_FIELD + r"""
-- One item bucket. KEYS: 1 positions, 2 the bucket's popularity shard, 3 the bucket's viewed items
--   (HyperLogLog), 4 the bucket's day hash of two days before the call's newest click (deleted), then the
--   day hashes of the call's clicks (ss:g:iw:{tag}:<day>), then the sorted sets (c:<action> of an item).
-- ARGV: 1 ttl, 2 click retention s, 3 popularity keep, 4 inline max, 5 the clicks (JSON, one array each:
--   its sorted set's KEYS index, its day hash's KEYS index, event id, item id, action letter, action,
--   ts - its day's start (text), position field ('' = none), offset), 6 the day hashes' starts (JSON, Unix s:
--   start + (ts - start) is the ts exactly).
-- Small windows inline: an item's clicks of one action on one UTC day live in that day's hash of the
--   bucket, field <letter><item> = 'event id<TAB>s into the day<TAB>...' (ids hold no control character:
--   streamscore.events), while at most `inline max` (most items are
--   clicked once or twice: a sorted set key of their own costs ~100 bytes more than a field). The click
--   that would make one more moves the field's clicks into the item's sorted set and leaves 'S' in the
--   field: that day's later clicks of the item go to the set. A field lists its clicks by event id (byte
--   order), so what is stored does not depend on the order the clicks came in. Every click is kept in exactly one place
--   (a redelivered one is found in its day's field, or by its ZADD reply), and reads (ITEMS) add the set's
--   count to the fields' of the read's day and the day before, which is all a 24 h window can reach. A day
--   hash is deleted once the bucket's clicks are two days past it (a field never needs trimming: its
--   clicks are of one day), and has the TTL.
-- A new view adds 1 to its item in the shard, which counts the `keep` most viewed items with Space-Saving
--   (Metwally, Agrawal, El Abbadi 2005): an item counted already, or any while the shard has room, adds
--   its views; a newcomer to a full shard takes the place of the weakest (lowest count, ties: the
--   smallest id) with that count plus its own views. So a count overestimates by at most the count it
--   took over, and an item with more views than the weakest kept count is never left out. A shard
--   holds at most `keep` members (<= 128: Redis's compact encoding, ~20 bytes per item). The new views'
--   items also go in the bucket's HyperLogLog: the distinct items viewed, which the shard no longer is.
local ttl, ret, pop_keep, inline_max = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local views, per_item, order = 0, {}, {}
redis.call('UNLINK', KEYS[4])
local clicks = cjson.decode(ARGV[5])
-- the day hashes' fields the call touches, read with one HMGET per day hash:
-- day hash KEYS index -> {fields = {field -> x}, set = {field -> true}}, x = {m = event id -> s into the day, n, spilled}
local days, day_order = {}, {}
for _, e in ipairs(clicks) do
  local h = days[e[2]]
  if h == nil then
    h = {fields = {}, set = {}, names = {}}
    days[e[2]] = h
    day_order[#day_order + 1] = e[2]
  end
  local f = e[5] .. e[4]
  if h.fields[f] == nil then
    h.fields[f] = false
    h.names[#h.names + 1] = f
  end
end
for _, d in ipairs(day_order) do
  local h = days[d]
  local values = redis.call('HMGET', KEYS[d], unpack(h.names))
  for j, f in ipairs(h.names) do
    local m, n = day_field_read(values[j])
    h.fields[f] = {m = m or {}, n = n, spilled = values[j] == 'S'}
  end
end
local day_starts = cjson.decode(ARGV[6])
for _, e in ipairs(clicks) do
  local zk, eid, item, action, rel = KEYS[e[1]], e[3], e[4], e[6], e[7]
  local ts = day_starts[e[2] - 4] + tonumber(rel)
  local f = e[5] .. item
  local h = days[e[2]]
  local x = h.fields[f]
  local added = false
  if x.m[eid] ~= nil then
    added = false
  elseif x.spilled then
    added = window_add(zk, eid, ts)
  elseif x.n < inline_max then
    x.m[eid] = rel
    x.n = x.n + 1
    h.set[f] = true
    added = true
  else  -- spill: the field's clicks into the sorted set, then this one; the field keeps 'S'
    local zargs, start = {}, day_starts[e[2] - 4]
    for m, rel in pairs(x.m) do
      zargs[#zargs + 1] = string.format('%.17g', start + tonumber(rel))  -- exact: ts = start + (ts - start)
      zargs[#zargs + 1] = m
    end
    redis.call('ZADD', zk, unpack(zargs))
    x.m, x.n, x.spilled = {}, 0, true
    h.set[f] = true
    added = window_add(zk, eid, ts)
  end
  if is_new(e[8], e[9], added) and action == 'view' then
    if per_item[item] == nil then
      per_item[item] = 0
      order[#order + 1] = item
    end
    per_item[item] = per_item[item] + 1
    views = views + 1
  end
end
trim_windows(ret, ttl)
for _, d in ipairs(day_order) do
  local flat = {}
  for f in pairs(days[d].set) do
    local x = days[d].fields[f]
    flat[#flat + 1] = f
    flat[#flat + 1] = x.spilled and 'S' or day_field_text(x.m)
  end
  if #flat > 0 then
    redis.call('HSET', KEYS[d], unpack(flat))
    redis.call('EXPIRE', KEYS[d], ttl)
  end
end
if views > 0 then
  local k = KEYS[2]
  local card = redis.call('ZCARD', k)
  if card > pop_keep then  -- a shard written with a larger keep: its weakest leave
    redis.call('ZREMRANGEBYRANK', k, 0, card - pop_keep - 1)
    card = pop_keep
  end
  for _, item in ipairs(order) do  -- once per item, in first-view order
    local c = per_item[item]
    if card < pop_keep then
      if tonumber(redis.call('ZINCRBY', k, c, item)) == c then card = card + 1 end
    elseif not redis.call('ZADD', k, 'XX', 'INCR', c, item) then  -- full, and a newcomer: the weakest leaves
      local weakest = redis.call('ZPOPMIN', k)  -- lowest count, ties: the smallest id (the shard's own order)
      redis.call('ZADD', k, tonumber(weakest[2]) + c, item)
    end
  end
  redis.call('PFADD', KEYS[3], unpack(order))
  redis.call('EXPIRE', KEYS[2], ttl)
  redis.call('EXPIRE', KEYS[3], ttl)
end
store_positions(ttl)
return views
"""

_DECAYED = _BYTES_ORDER + r"""
-- time-decayed counts relative to an epoch member (scored -epoch: rank 0, below every weight > 0; '' in
-- the trends, no item id being empty; the item itself in its co-visitation set, an item never being its
-- own neighbour): a weight w added at ts is stored as w * 2^((ts - epoch) / hl); once ts is more than
-- `rescale` half-lives past the epoch, every weight is rescaled (ZUNIONSTORE WEIGHTS) to a new epoch ts.
-- The `keep` strongest members stay (ties: the smaller member leaves first, as ZREMRANGEBYRANK): a
-- newcomer to a full set takes the weakest's place only when it is stronger, which is what adding it and
-- trimming to `keep` would leave, without the set ever holding keep + 2 entries (a sorted set of <= 128
-- stays in Redis's compact encoding, ~4x smaller, and would not go back to it once past). The size is
-- read once per key per call and then counted: ZINCRBY answers exactly the increment for a new member
-- (0 + inc), and for an existing one old + inc, which equals inc only if old is below inc's rounding (then
-- the count is one too high: it only bounds the size from above, and is read again before a newcomer
-- would take the weakest's place). A full set's members are counted with ZADD XX INCR (nil: not a member).
local dec_epochs, dec_keys, dec_cards, dec_exact = {}, {}, {}, {}
local function decayed_add(k, epoch_member, member, w, ts, hl, rescale, keep)
  local epoch = dec_epochs[k]
  if epoch == nil then
    local stored = redis.call('ZSCORE', k, epoch_member)
    if stored then
      epoch = -tonumber(stored)
    else
      epoch = ts
      redis.call('ZADD', k, -ts, epoch_member)
    end
    dec_cards[k], dec_exact[k] = redis.call('ZCARD', k), true
    if dec_cards[k] > keep + 1 then  -- written with a larger keep: the weakest leave (rank 0: the epoch)
      redis.call('ZREMRANGEBYRANK', k, 1, dec_cards[k] - keep - 1)
      dec_cards[k] = keep + 1
    end
    dec_keys[#dec_keys + 1] = k
  end
  if hl > 0 and ts - epoch > rescale * hl then
    redis.call('ZUNIONSTORE', k, 1, k, 'WEIGHTS', string.format('%.17g', 2 ^ ((epoch - ts) / hl)))
    epoch = ts
    redis.call('ZADD', k, -ts, epoch_member)
  end
  dec_epochs[k] = epoch
  local inc = w
  if hl > 0 then inc = w * 2 ^ ((ts - epoch) / hl) end
  local inc_s = string.format('%.17g', inc)
  if dec_cards[k] <= keep then  -- room (rank 0: the epoch)
    if tonumber(redis.call('ZINCRBY', k, inc_s, member)) == tonumber(inc_s) then
      dec_cards[k], dec_exact[k] = dec_cards[k] + 1, false
    end
  elseif not redis.call('ZADD', k, 'XX', 'INCR', inc_s, member) then  -- full, and a newcomer
    if not dec_exact[k] then dec_cards[k], dec_exact[k] = redis.call('ZCARD', k), true end
    if dec_cards[k] <= keep then
      redis.call('ZADD', k, inc_s, member)
      dec_cards[k] = dec_cards[k] + 1
    else
      local weakest = redis.call('ZRANGE', k, 1, 1, 'WITHSCORES')
      local ws, v = tonumber(weakest[2]), tonumber(inc_s)
      if v > ws or (v == ws and bytes_lt(weakest[1], member)) then
        redis.call('ZREM', k, weakest[1])
        redis.call('ZADD', k, inc_s, member)
      end  -- else the newcomer is the weakest: it would leave at once
    end
  end
end
"""

COVIS_ADD = _POSITIONS + _DECAYED + r"""
-- One item bucket. KEYS: 1 positions, then per distinct item a: ss:cv:{a}.
-- ARGV: 1 ttl, 2 half-life s (0 = no decay), 3 keep, 4 rescale (half-lives), 5 the pairs (JSON, one
--   array each: item number (0-based), item a, neighbour b, weight w, ts, position field ('' = none), offset).
-- a's epoch is its own member in ss:cv:{a} (an item is never its own neighbour), scored -epoch:
-- below every weight (weights are > 0), so rank 0. Weight w of b added to a at ts, stored relative to a's epoch:
-- raw += w * 2^((ts - epoch) / half-life); rescaled to a new epoch when it grows large. A pair
-- with a position counts once per bucket (field 'cv|<topic>:<partition>').
local ttl, hl, cv_keep, rescale = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
for _, e in ipairs(cjson.decode(ARGV[5])) do
  local field = e[6]
  if is_new(field == '' and '' or ('cv|' .. field), e[7], true) then
    decayed_add(KEYS[2 + e[1]], e[2], e[3], tonumber(e[4]), tonumber(e[5]), hl, rescale, cv_keep)
  end
end
for _, k in ipairs(dec_keys) do redis.call('EXPIRE', k, ttl) end
store_positions(ttl)
return #dec_keys
"""


CATEGORY_TRENDS_ADD = _POSITIONS + _WINDOWS + _DECAYED + r"""
-- One category bucket. KEYS: 1 positions (ss:g:off:{cat.n}), 2 the bucket's global trending shard
--   (ss:g:trend:{cat.n}), 3 the bucket's seen views (ss:g:trend-seen:{cat.n}), then per distinct category
--   its trending items (ss:cat:{cat.n}:<category>:trend).
-- ARGV: 1 ttl, 2 half-life s (0 = no decay), 3 keep per category, 4 keep per shard, 5 rescale (half-lives),
--   6 seen retention s, 7 the views (JSON, one array each: category number (0-based; -1 = no category:
--   the global shard only), event id, item, ts, position field ('' = none), offset).
-- A view counts once: with a position when its offset is past the bucket's stored one, without one
-- when its event id is new to the seen window. It adds 1 (decayed) to the item in its category and
-- in the bucket's global shard. Returns the views counted.
local ttl, hl, keep, shard_keep = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local rescale, seen_ret = tonumber(ARGV[5]), tonumber(ARGV[6])
local counted = 0
for _, e in ipairs(cjson.decode(ARGV[7])) do
  local field, ts = e[5], tonumber(e[4])
  local added = false
  if field == '' then added = window_add(KEYS[3], e[2], ts) end
  if is_new(field, e[6], added) then
    if e[1] >= 0 then decayed_add(KEYS[4 + e[1]], '', e[3], 1, ts, hl, rescale, keep) end
    decayed_add(KEYS[2], '', e[3], 1, ts, hl, rescale, shard_keep)
    counted = counted + 1
  end
end
trim_windows(seen_ret, ttl)
for _, k in ipairs(dec_keys) do redis.call('EXPIRE', k, ttl) end
store_positions(ttl)
return counted
"""

_DECAYED_TOP = r"""
-- a decayed-count set's epoch and its n strongest members (weight desc, ties by member desc), the
-- epoch's own member left out: {epoch ('' = no counts), {member, raw weight, ...}}
local function decayed_top(k, epoch_member, n)
  local epoch = redis.call('ZSCORE', k, epoch_member)
  local flat, top = redis.call('ZREVRANGE', k, 0, n, 'WITHSCORES'), {}
  for j = 1, #flat, 2 do
    if flat[j] ~= epoch_member and #top < 2 * n then
      top[#top + 1] = flat[j]
      top[#top + 1] = flat[j + 1]
    end
  end
  return {epoch and string.format('%.17g', -tonumber(epoch)) or '', top}
end
"""

TRENDS = _DECAYED_TOP + r"""
-- One slot. KEYS: decayed-count ZSETs (a category's trending items, or a global trending shard).
-- ARGV: n. Returns per key {epoch ('' = no counts), {member, raw weight, ...}}: the n strongest
-- (weight desc, ties by member desc; the epoch member '' left out). A weight's value at time t is
-- raw * 2^((epoch - t) / half-life) (features.store.decay_factor).
local n, out = tonumber(ARGV[1]), {}
for b = 1, #KEYS do out[b] = decayed_top(KEYS[b], '', n) end
return out
"""

USER_CLICKS = _FUNNEL_CODES + r"""
-- One user. KEYS: c:view, c:add_to_cart, c:purchase, state.
-- ARGV: ts, then the click windows s (5 min, 1 h, 24 h).
-- Returns {views per window, carts per window, purchases per window, recent item count, funnel state,
--   views with a category, the top category (member, score)}. A window counts the members of its
--   sorted set and the user's inline clicks of that action ('e' fields of the state hash, CLICKS_USERS).
local ts_s = ARGV[1]
local ts = tonumber(ts_s)
local LETTERS = {'v', 'a', 'p'}
local flat, state, views, top, top_n, recent = redis.call('HGETALL', KEYS[4]), 'start', '0', nil, 0, 0
local inline = {v = {}, a = {}, p = {}}
for j = 1, #flat, 2 do
  local f, v = flat[j], flat[j + 1]
  local c = string.sub(f, 1, 1)
  if f == 's' then state = STATE_NAME[v] or v
  elseif f == 'n' then views = v
  elseif c == 'r' then recent = recent + 1
  elseif c == 'e' then
    local per = inline[string.sub(f, 2, 2)]
    if per then per[#per + 1] = tonumber(v) end
  elseif c == 'c' then
    local n = tonumber(v)
    if n > top_n or (n == top_n and string.sub(f, 2) < top) then top, top_n = string.sub(f, 2), n end
  end
end
local out = {}
for a = 1, 3 do
  for w = 2, #ARGV do
    local lo = string.format('%.6f', ts - tonumber(ARGV[w]))
    local n = redis.call('ZCOUNT', KEYS[a], lo, '(' .. ts_s)
    local lo_n = tonumber(lo)
    for _, t in ipairs(inline[LETTERS[a]]) do
      if t >= lo_n and t < ts then n = n + 1 end
    end
    out[#out + 1] = n
  end
end
out[#out + 1] = recent
out[#out + 1] = state
out[#out + 1] = views
out[#out + 1] = top and {top, top_n} or {}
return out
"""

ITEMS = _DAY_FIELD + r"""
-- One item bucket. KEYS: 1 the bucket's day hash of the read's UTC day, 2 of the day before (CLICKS_ITEMS),
--   then per item 5: c:view, c:add_to_cart, c:purchase, catalog, sales.
-- ARGV: ts, short views window s (1 h), day window s (24 h), sales window s (7 d), the two days' starts (Unix s),
--   then the item ids.
-- Returns per item: {views 1h, views 24h, carts 24h, purchases 24h, catalog hash (flat field, value),
--   sales members in the sales window}. A click window counts its sorted set's members and the item's
--   inline clicks of that action in the two day hashes (a window of <= 24 h before ts reaches no other day).
local ts_s = ARGV[1]
local ts = tonumber(ts_s)
local before = '(' .. ts_s
local short, day, sales = string.format('%.6f', ts - tonumber(ARGV[2])), string.format('%.6f', ts - tonumber(ARGV[3])),
                          string.format('%.6f', ts - tonumber(ARGV[4]))
local short_n, day_n = tonumber(short), tonumber(day)
local fields = {}  -- the items' inline fields, v a p per item, read with one HMGET per day hash
for j = 7, #ARGV do
  for _, letter in ipairs({'v', 'a', 'p'}) do fields[#fields + 1] = letter .. ARGV[j] end
end
local day_values = {}
if #fields > 0 then day_values = {redis.call('HMGET', KEYS[1], unpack(fields)), redis.call('HMGET', KEYS[2], unpack(fields))} end
local function inline(i)  -- {views 1h, views 24h, carts 24h, purchases 24h} kept inline for the i-th item (0-based)
  local n = {0, 0, 0, 0}
  for d = 1, 2 do
    local start = tonumber(ARGV[4 + d])
    local vals = day_values[d]
    for w = 1, 3 do
      for _, rel in pairs(day_field_read(vals[3 * i + w]) or {}) do
        local t = start + tonumber(rel)
        if t < ts then
          if t >= day_n then n[w + 1] = n[w + 1] + 1 end
          if w == 1 and t >= short_n then n[1] = n[1] + 1 end
        end
      end
    end
  end
  return n
end
local out = {}
for b = 0, #KEYS - 3, 5 do
  local k = 2 + b
  local n = inline(b / 5)
  out[#out + 1] = {
    redis.call('ZCOUNT', KEYS[k + 1], short, before) + n[1],
    redis.call('ZCOUNT', KEYS[k + 1], day, before) + n[2],
    redis.call('ZCOUNT', KEYS[k + 2], day, before) + n[3],
    redis.call('ZCOUNT', KEYS[k + 3], day, before) + n[4],
    redis.call('HGETALL', KEYS[k + 4]),
    redis.call('ZRANGEBYSCORE', KEYS[k + 5], sales, before),
  }
end
return out
"""

ORDERS_USERS = r"""
-- One user bucket. KEYS per order (1 + 3 * hll hours + 3): the user's orders, the user's device /
--   ip / card HyperLogLogs of the hll hours before the order's hour (device first), then those of
--   the order's hour.
-- ARGV: 1 ttl, 2 write ('1' = read then write), 3 order retention s, 4 hll hours,
--   then 5 per order: order_id, amount, ts, device hash, ip hash, card hash ('' = none) -> 6.
-- Returns per order {user history (flat member, score), distinct devices, ips, cards (PFCOUNT)}.
local ttl, write, order_ret, hours = tonumber(ARGV[1]), ARGV[2] == '1', tonumber(ARGV[3]), tonumber(ARGV[4])
local per = 1 + 3 * hours + 3
local out, o = {}, 0
for i = 5, #ARGV, 6 do
  local base = per * o
  local ts_s = ARGV[i + 2]
  local ts = tonumber(ts_s)
  local uk = KEYS[base + 1]
  local reply = {redis.call('ZRANGEBYSCORE', uk, string.format('%.6f', ts - order_ret), '(' .. ts_s, 'WITHSCORES')}
  for e = 0, 2 do
    reply[#reply + 1] = redis.call('PFCOUNT', unpack(KEYS, base + 2 + e * hours, base + 1 + (e + 1) * hours))
  end
  out[#out + 1] = reply
  if write then
    redis.call('ZADD', uk, ts, ARGV[i] .. '|' .. ARGV[i + 1])
    redis.call('ZREMRANGEBYSCORE', uk, '-inf', string.format('(%.6f', ts - order_ret))
    redis.call('EXPIRE', uk, ttl)
    for e = 0, 2 do
      local h = ARGV[i + 3 + e]
      if h ~= '' then
        local hk = KEYS[base + 2 + 3 * hours + e]
        redis.call('PFADD', hk, h)
        redis.call('EXPIRE', hk, (hours + 1) * 3600)
      end
    end
  end
  o = o + 1
end
return out
"""

ORDERS_ENTITIES = r"""
-- One device / ip / card bucket. KEYS per entry 5: users, orders, lusers, lorders, fraud.
-- ARGV: 1 ttl, 2 write, 3 users window s (30 d), 4..6 the order-count windows (10 min, 1 h, 24 h),
--   7 order retention s, 8 lifetime retention s, 9 lifetime cap, then 3 per entry (an order's
--   entity): order_id, user hash, ts.
-- Returns per entry {users_30d, orders_10m, orders_1h, orders_24h, users ever, first order ts
--   ('' = none before), orders ever, fraud links before the order}.
-- Long-horizon sets keep their `cap` earliest members (by first-seen ts, order ts, label arrival
-- ts), so "members before t" is exact up to the cap whatever the arrival order.
local ttl, write, users_w = tonumber(ARGV[1]), ARGV[2] == '1', tonumber(ARGV[3])
local wins, order_ret, life_ret, cap = {tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])}, tonumber(ARGV[7]),
                                       tonumber(ARGV[8]), tonumber(ARGV[9])
local function bound(x) return string.format('%.6f', x) end
local function window_add(k, flag, member, ts, retention)
  if flag then redis.call('ZADD', k, flag, ts, member) else redis.call('ZADD', k, ts, member) end
  redis.call('ZREMRANGEBYSCORE', k, '-inf', '(' .. bound(ts - retention))
  redis.call('EXPIRE', k, ttl)
end
local function capped_add(k, member, ts)  -- keep the `cap` earliest members (ZADD LT: a member's earliest ts)
  redis.call('ZADD', k, 'LT', ts, member)
  redis.call('ZREMRANGEBYRANK', k, cap, -1)
  redis.call('EXPIRE', k, life_ret)
end
local out, e = {}, 0
for i = 10, #ARGV, 3 do
  local b = 5 * e
  local oid, uh, ts_s = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local ts = tonumber(ts_s)
  local before = '(' .. ts_s
  local reply = {redis.call('ZCOUNT', KEYS[b + 1], bound(ts - users_w), before)}
  for _, w in ipairs(wins) do reply[#reply + 1] = redis.call('ZCOUNT', KEYS[b + 2], bound(ts - w), before) end
  reply[#reply + 1] = redis.call('ZCOUNT', KEYS[b + 3], '-inf', before)
  local first = redis.call('ZRANGE', KEYS[b + 4], 0, 0, 'WITHSCORES')
  reply[#reply + 1] = (first[2] and tonumber(first[2]) < ts) and first[2] or ''
  reply[#reply + 1] = redis.call('ZCOUNT', KEYS[b + 4], '-inf', before)
  reply[#reply + 1] = redis.call('ZCOUNT', KEYS[b + 5], '-inf', before)
  out[#out + 1] = reply
  if write then
    window_add(KEYS[b + 1], 'LT', uh, ts, users_w)
    window_add(KEYS[b + 2], nil, oid, ts, order_ret)
    capped_add(KEYS[b + 3], uh, ts)
    capped_add(KEYS[b + 4], oid, ts)
  end
  e = e + 1
end
return out
"""

ORDERS_META = r"""
-- One order bucket (write only). KEYS per order 2: ss:o:{id}:ents, ss:l:{id}:at.
-- ARGV: 1 ents ttl (the label ttl), then 2 per order: order_id, 'device|ip|card' hashes ('' = none at all).
-- Stores the order's entities for its label (JOIN_LABELS); returns per order the arrival ts of a
-- fraud label that came before it ('' = none): the client then links its entities (LINK_FRAUD).
local ttl, out, o = tonumber(ARGV[1]), {}, 0
for i = 2, #ARGV, 2 do
  if ARGV[i + 1] ~= '' then redis.call('SET', KEYS[2 * o + 1], ARGV[i + 1], 'EX', ttl) end
  out[#out + 1] = redis.call('GET', KEYS[2 * o + 2]) or ''
  o = o + 1
end
return out
"""

LINK_FRAUD = r"""
-- One device / ip / card bucket. KEYS: the entities' fraud sets (ss:{kind}:{tag}:{h}:fraud).
-- ARGV: 1 lifetime retention s, 2 cap, then 2 per key: order_id, ts (the label's arrival, or the
-- order's when later). ZADD LT keeps a member's earliest ts and the cap the earliest members:
-- re-linking changes nothing.
local life_ret, cap = tonumber(ARGV[1]), tonumber(ARGV[2])
for n = 1, #KEYS do
  redis.call('ZADD', KEYS[n], 'LT', ARGV[2 + 2 * n], ARGV[1 + 2 * n])
  redis.call('ZREMRANGEBYRANK', KEYS[n], cap, -1)
  redis.call('EXPIRE', KEYS[n], life_ret)
end
return #KEYS
"""

STORE_RECS = r"""
-- One user bucket. KEYS per user 2: ss:rec:{h}, ss:rec:{h}:items. ARGV: ttl, then per user: json,
-- cold ('1' or '0'), n, then n item ids. Stores the JSON served over HTTP and item -> cold flag
-- (for counting clicks on recommended items), both with the TTL.
local ttl, i, u = tonumber(ARGV[1]), 2, 0
while i <= #ARGV do
  local rk, ik, n = KEYS[2 * u + 1], KEYS[2 * u + 2], tonumber(ARGV[i + 2])
  redis.call('SET', rk, ARGV[i], 'EX', ttl)
  redis.call('DEL', ik)
  for k = 1, n do redis.call('HSET', ik, ARGV[i + 2 + k], ARGV[i + 1]) end
  if n > 0 then redis.call('EXPIRE', ik, ttl) end
  u = u + 1
  i = i + 3 + n
end
return u
"""

WINDOW_ADD = r"""
-- One slot. KEYS: windowed sets; ARGV: ttl, retention s, then 2 per key: event ts, member.
-- One member per order and item ('{order_id}|{value}'), so a redelivered order adds nothing;
-- trimmed to the retention (the items' sales and revenue).
local ttl, keep = tonumber(ARGV[1]), tonumber(ARGV[2])
for n = 1, #KEYS do
  local k, ts = KEYS[n], ARGV[1 + 2 * n]
  redis.call('ZADD', k, ts, ARGV[2 + 2 * n])
  redis.call('ZREMRANGEBYSCORE', k, '-inf', '(' .. string.format('%.6f', tonumber(ts) - keep))
  redis.call('EXPIRE', k, ttl)
end
return 0
"""

CATALOG = r"""
-- One item bucket. KEYS: the items' catalog hashes; ARGV: ttl, then 4 per key: price, cost, stock,
-- event ts. An entry older than the item's stored one changes nothing (a redelivered or late catalog
-- event must not undo a newer one); its price is taken only when newer than the last price the
-- pricing loop set (price_changed_at), so an old price in the shop's feed does not revert an adjustment.
local ttl = tonumber(ARGV[1])
for n = 1, #KEYS do
  local ck, i = KEYS[n], 4 * n - 2
  local ts = tonumber(ARGV[i + 3])
  local stored = tonumber(redis.call('HGET', ck, 'ts') or '-1e300')
  if ts >= stored then
    redis.call('HSET', ck, 'cost', ARGV[i + 1], 'stock', ARGV[i + 2], 'ts', ARGV[i + 3])
    if ts > tonumber(redis.call('HGET', ck, 'price_changed_at') or '-1e300') then
      redis.call('HSET', ck, 'price', ARGV[i])
    end
  end
  redis.call('HSETNX', ck, 'ref_price', ARGV[i])
  redis.call('EXPIRE', ck, ttl)
end
return 0
"""

COVIS = _DECAYED_TOP + r"""
-- One item bucket. KEYS per item: ss:cv:{item}. ARGV: n, then the items. Returns per item
-- {epoch ('' = no counts), {neighbour, raw weight, ...}}: the n strongest neighbours (weight desc,
-- ties by id desc; the epoch member, the item itself, left out); their value at time t is
-- raw * 2^((epoch - t) / half-life) (features.store.decay_factor).
local n, out = tonumber(ARGV[1]), {}
for b = 1, #KEYS do out[b] = decayed_top(KEYS[b], ARGV[b + 1], n) end
return out
"""

RECORD_VERDICTS = r"""
-- One order bucket. KEYS: 1 the bucket's pending shard, then per order 3: ss:v:{id}, ss:l:{id}, ss:o:{id}.
-- ARGV: verdict ttl, label ttl, then per order: order_id, verdict, learn record (JSON), event ts.
-- Per order, atomically: SET ss:v:{order_id} verdict NX EX <verdict ttl>, then
--   a verdict was already recorded -> {0, that verdict}: nothing else is stored;
--   an early label ss:l:{order_id} was waiting -> taken (deleted), {2, '1' | '0'}: the caller
--     learns at once, the learn record is not stored;
--   otherwise -> the learn record is stored (ss:o:{order_id}, label ttl) and the order pending
--     (member order_id, score event ts): {1, ''}.
local vttl, lttl, out, o = tonumber(ARGV[1]), tonumber(ARGV[2]), {}, 0
for i = 3, #ARGV, 4 do
  local vk, lk, rk = KEYS[2 + 3 * o], KEYS[3 + 3 * o], KEYS[4 + 3 * o]
  if not redis.call('SET', vk, ARGV[i + 1], 'NX', 'EX', vttl) then
    out[#out + 1] = {0, redis.call('GET', vk)}
  else
    local label = redis.call('GET', lk)
    if label then
      redis.call('DEL', lk)
      out[#out + 1] = {2, label}
    else
      redis.call('SET', rk, ARGV[i + 2], 'EX', lttl)
      redis.call('ZADD', KEYS[1], ARGV[i + 3], ARGV[i])
      out[#out + 1] = {1, ''}
    end
  end
  o = o + 1
end
return out
"""

JOIN_LABELS = r"""
-- One order bucket. KEYS: 1 the bucket's pending shard, then per label 4: ss:o:{id}, ss:l:{id},
--   ss:o:{id}:ents, ss:l:{id}:at.
-- ARGV: label ttl, then per label: order_id, '1' (fraud) | '0' (legitimate), label ts (its arrival).
-- Per order, atomically: takes (GETDEL) the order's learn record and removes the order from the
-- pending shard; with no record, keeps the label as an early label (SET ss:l:{id} EX <label ttl>)
-- for RECORD_VERDICTS to take. A fraud label returns the order's entities (written by ORDERS_META)
-- for the client to link from the label's ts (LINK_FRAUD, in the entities' buckets); when the
-- order was not seen yet, ss:l:{id}:at keeps the label ts for ORDERS_META to return then.
-- Returns per label {learn record or '', 'device|ip|card' hashes or ''}.
local ttl, out, o = tonumber(ARGV[1]), {}, 0
for i = 2, #ARGV, 3 do
  local rk, lk, ek, ak = KEYS[2 + 4 * o], KEYS[3 + 4 * o], KEYS[4 + 4 * o], KEYS[5 + 4 * o]
  local rec = redis.call('GETDEL', rk)
  redis.call('ZREM', KEYS[1], ARGV[i])
  if not rec then
    redis.call('SET', lk, ARGV[i + 1], 'EX', ttl)
    rec = ''
  end
  local ents = ''
  if ARGV[i + 1] == '1' then
    ents = redis.call('GET', ek)
    if not ents then
      redis.call('SET', ak, ARGV[i + 2], 'EX', ttl)
      ents = ''
    end
  end
  out[#out + 1] = {rec, ents}
  o = o + 1
end
return out
"""

SCRIPTS = {name.lower(): src for name, src in globals().items()
           if name.isupper() and isinstance(src, str) and not name.startswith("_") and "KEYS" in src}
