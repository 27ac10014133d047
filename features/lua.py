"""Server-side scripts of the feature store (Lua, run by Redis / Valkey).

One script call handles a whole chunk of events, so the client pays one command per
chunk instead of ~10 per event (redis-py spends ~45 us per command). Each call is
atomic: a crash never leaves half an event written. Scripts touch keys they compute
from their arguments, so the store needs a standalone Redis (not Redis Cluster).

Invariants kept here (see :mod:`features.store` for the key layout):

* every key built from an id goes through ``key(kind, id)`` of :data:`features.keys.LUA`
  (prepended to every script): the id is escaped exactly as :func:`features.keys.esc` does,
  whether it came in ARGV or was read from a member (co-visitation pairs the user's recent
  items); keys that belong to no id are ``KEY_POPULAR``, ``KEY_FUNNEL``, ``KEY_PENDING``
  (``ss:g:*``). Members, fields and replies hold raw ids;
* windowed members are keyed by the event's own id: re-running a script for an event
  changes nothing;
* the aggregates that are not idempotent by construction (``ss:g:popular`` view counts,
  ``ss:g:funnel`` transition counts, ``ss:u:{h}:cats`` category counts, ``ss:cv:{item}``
  co-visitation weights) run only the first time an event id is seen
  (``ss:seen:{event_id}``, kept ``seen_ttl`` seconds);
* order reads run before that order's writes and count only members with score < ts;
* an order's verdict is recorded once (``SET NX``): a redelivered order gets the first
  verdict back and stores nothing; a label and its order's learn record meet exactly once,
  whichever comes first (RECORD_VERDICTS takes an early label, JOIN_LABELS takes a record).
"""

from features.keys import LUA as KEYS

CLICKS = KEYS + r"""
-- ARGV: ttl, retention_s, recent_keep, seen_ttl, recent_return,
--       covis ('1' = count co-visitation), covis half-life s (0 = no decay), covis keep, covis window,
--       covis gap s, covis rescale (half-lives), then 6 per click:
--       event_id, user_hash, item_id, action, ts, category ('' = none)
-- Returns, for each distinct user in first-appearance order, their newest items (newest first),
-- then {clicks on recommended items from a model list, ... from a cold-start list}.
local ttl, ret, keep, seen_ttl, ret_n = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]),
                                        tonumber(ARGV[4]), tonumber(ARGV[5])
local cv_on, cv_hl, cv_keep, cv_window, cv_gap, cv_rescale = ARGV[6] == '1', tonumber(ARGV[7]), tonumber(ARGV[8]),
                                                            tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11])
local STATE = {view = 'browse', add_to_cart = 'cart', remove_from_cart = 'browse', purchase = 'purchase'}
local seen_users, users, hits = {}, {}, {0, 0}
-- Trims and TTLs run once per key per call, at the end (clicks are the hottest path): a windowed
-- set is trimmed to its newest ts in the call minus the retention, the recent items to the newest
-- keep, and each touched key's TTL refreshed once. Reads see the same: no read window reaches a
-- member older than the newest minus the retention.
local win_max, win_keys, recent_keys, recent_seen, touched, touched_keys = {}, {}, {}, {}, {}, {}
local function window_add(k, member, ts)
  redis.call('ZADD', k, ts, member)
  local m = win_max[k]
  if m == nil then
    win_keys[#win_keys + 1] = k
    win_max[k] = ts
  elseif ts > m then
    win_max[k] = ts
  end
end
local function touch(k)
  if not touched[k] then
    touched[k] = true
    touched_keys[#touched_keys + 1] = k
  end
end
-- co-visitation: weight w of neighbour b added to item a at ts, stored relative to a's epoch
-- (ss:cv:{a}:t): raw += w * 2^((ts - epoch) / half-life); rescaled to a new epoch when it grows large.
-- Epochs and keys are computed once per item per call (cv_epoch, cv_key; a and b are raw ids, read
-- from ss:u:{h}:recent or given) and TTLs refreshed once at the end (cv_touched): per pair only the
-- increment and the trim run (clicks are the hottest path).
local cv_epoch, cv_key, cv_touched = {}, {}, {}
local function covis_add(a, b, w, ts, ts_s)
  local k = cv_key[a]
  if k == nil then
    k = key('cv', a)
    cv_key[a] = k
  end
  local epoch = cv_epoch[a]
  if epoch == nil then
    epoch = tonumber(redis.call('GET', k .. ':t'))
    if not epoch then
      epoch = ts
      redis.call('SET', k .. ':t', ts_s, 'EX', ttl)
    end
    cv_touched[#cv_touched + 1] = k
  end
  if cv_hl > 0 and ts - epoch > cv_rescale * cv_hl then
    redis.call('ZUNIONSTORE', k, 1, k, 'WEIGHTS', string.format('%.17g', 2 ^ ((epoch - ts) / cv_hl)))
    epoch = ts
    redis.call('SET', k .. ':t', ts_s, 'EX', ttl)
  end
  cv_epoch[a] = epoch
  local inc = w
  if cv_hl > 0 then inc = w / (2 ^ ((epoch - ts) / cv_hl)) end
  redis.call('ZINCRBY', k, string.format('%.17g', inc), b)
  redis.call('ZREMRANGEBYRANK', k, 0, -(cv_keep + 1))
end
for i = 12, #ARGV, 6 do
  local eid, uh, item, action, ts, cat = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], tonumber(ARGV[i + 4]), ARGV[i + 5]
  local ub = key('u', uh)
  window_add(ub .. ':c:' .. action, eid, ts)
  window_add(key('i', item) .. ':c:' .. action, eid, ts)
  if action == 'view' then
    local rk = ub .. ':recent'
    redis.call('ZADD', rk, 'GT', ts, item)
    if not recent_seen[rk] then
      recent_seen[rk] = true
      recent_keys[#recent_keys + 1] = rk
    end
  end
  if redis.call('SET', key('seen', eid), '1', 'NX', 'EX', seen_ttl) then
    if action == 'view' then
      redis.call('ZINCRBY', KEY_POPULAR, 1, item)
      touch(KEY_POPULAR)
      if cv_on then  -- pairs with the user's previous distinct views of the last cv_gap seconds, newest first
        local prev = redis.call('ZREVRANGEBYSCORE', ub .. ':recent', '(' .. ARGV[i + 4],
                                string.format('%.6f', ts - cv_gap), 'LIMIT', 0, cv_window)
        for d, p in ipairs(prev) do
          if p ~= item then
            covis_add(p, item, 1 / d, ts, ARGV[i + 4])
            covis_add(item, p, 1 / d, ts, ARGV[i + 4])
          end
        end
      end
      if cat ~= '' then
        local ck = ub .. ':cats'
        redis.call('ZINCRBY', ck, 1, cat)
        touch(ck)
      end
    end
    local rec = redis.call('HGET', key('rec', uh) .. ':items', item)
    if rec then hits[rec == '1' and 2 or 1] = hits[rec == '1' and 2 or 1] + 1 end
    local fk = ub .. ':funnel'
    local from = redis.call('GET', fk) or 'start'
    local to = STATE[action]
    redis.call('HINCRBY', KEY_FUNNEL, from .. '>' .. to, 1)
    touch(KEY_FUNNEL)
    redis.call('SET', fk, to, 'EX', ttl)
  end
  if not seen_users[uh] then
    seen_users[uh] = true
    users[#users + 1] = uh
  end
end
for _, k in ipairs(win_keys) do
  redis.call('ZREMRANGEBYSCORE', k, '-inf', string.format('(%.6f', win_max[k] - ret))
  redis.call('EXPIRE', k, ttl)
end
for _, k in ipairs(recent_keys) do
  redis.call('ZREMRANGEBYRANK', k, 0, -(keep + 1))
  redis.call('EXPIRE', k, ttl)
end
for _, k in ipairs(touched_keys) do redis.call('EXPIRE', k, ttl) end
local out = {}
for n, uh in ipairs(users) do
  out[n] = redis.call('ZREVRANGE', key('u', uh) .. ':recent', 0, ret_n - 1)
end
out[#out + 1] = hits
for _, k in ipairs(cv_touched) do
  redis.call('EXPIRE', k, ttl)
  redis.call('EXPIRE', k .. ':t', ttl)
end
return out
"""

ORDERS = KEYS + r"""
-- ARGV (windows and retentions from features.definitions, passed by features.store.FeaturePlans):
--   1 ttl, 2 write ('1' = read then write, '0' = read only), 3 users window s (30 d),
--   4..6 the entity order-count windows (10 min, 1 h, 24 h), 7 order retention s (30 d),
--   8 sales retention s (7 d), 9 HLL hours (24), 10 lifetime retention s, 11 lifetime cap,
--   12 order-entities ttl (the label ttl), then per order:
--   order_id, user_hash, amount, ts, device_hash, ip_hash, card_hash ('' = none), n_lines,
--   then n_lines pairs item_id, quantity
-- Returns per order: {user history (flat member, score), then for device, ip, card:
--   users_30d, orders_10m, orders_1h, orders_24h (0 when absent), then the user's distinct
--   devices, IPs and cards over the HLL hours before the order's hour (HyperLogLog), then for
--   device, ip, card: users ever, first order ts ('' = none before), orders ever, fraud links
--   before the order (0 / '' when absent)}
-- Long-horizon sets (ss:{kind}:{h}:lusers / :lorders / :fraud) keep their `cap` earliest members
-- (by first-seen ts, order ts, label arrival ts), so "members before t" is exact up to the cap
-- whatever the arrival order, and re-applying an order changes nothing.
local ttl, write = tonumber(ARGV[1]), ARGV[2] == '1'
local users_w, wins, order_ret, sales_ret = tonumber(ARGV[3]), {tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])},
                                            tonumber(ARGV[7]), tonumber(ARGV[8])
local hll_hours, life_ret, cap, ents_ttl = tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11]), tonumber(ARGV[12])
local HOUR = 3600
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
local out, i = {}, 13
while i <= #ARGV do
  local oid, uh, amount, ts_s = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local ts = tonumber(ts_s)
  local ents = {{'device', ARGV[i + 4]}, {'ip', ARGV[i + 5]}, {'card', ARGV[i + 6]}}
  local n_lines = tonumber(ARGV[i + 7])
  local before = '(' .. ts_s
  local ub = key('u', uh)
  local uk = ub .. ':orders'
  local reply = {redis.call('ZRANGEBYSCORE', uk, bound(ts - order_ret), before, 'WITHSCORES')}
  for _, e in ipairs(ents) do
    if e[2] == '' then
      for _ = 1, 4 do reply[#reply + 1] = 0 end
    else
      local base = key(e[1], e[2])
      reply[#reply + 1] = redis.call('ZCOUNT', base .. ':users', bound(ts - users_w), before)
      for _, w in ipairs(wins) do
        reply[#reply + 1] = redis.call('ZCOUNT', base .. ':orders', bound(ts - w), before)
      end
    end
  end
  local hour = math.floor(ts / HOUR)
  for _, e in ipairs(ents) do
    local keys = {}
    for h = hour - hll_hours, hour - 1 do keys[#keys + 1] = ub .. ':hll:' .. e[1] .. ':' .. h end
    reply[#reply + 1] = redis.call('PFCOUNT', unpack(keys))
  end
  for _, e in ipairs(ents) do
    if e[2] == '' then
      for _ = 1, 4 do reply[#reply + 1] = 0 end
      reply[#reply - 2] = ''
    else
      local base = key(e[1], e[2])
      reply[#reply + 1] = redis.call('ZCOUNT', base .. ':lusers', '-inf', before)
      local first = redis.call('ZRANGE', base .. ':lorders', 0, 0, 'WITHSCORES')
      reply[#reply + 1] = (first[2] and tonumber(first[2]) < ts) and first[2] or ''
      reply[#reply + 1] = redis.call('ZCOUNT', base .. ':lorders', '-inf', before)
      reply[#reply + 1] = redis.call('ZCOUNT', base .. ':fraud', '-inf', before)
    end
  end
  out[#out + 1] = reply
  if write then
    window_add(uk, nil, oid .. '|' .. amount, ts, order_ret)
    local linked = {}
    local early = redis.call('GET', key('l', oid) .. ':at')  -- a fraud label that came before this order
    for _, e in ipairs(ents) do
      if e[2] ~= '' then
        local base = key(e[1], e[2])
        window_add(base .. ':users', 'LT', uh, ts, users_w)
        window_add(base .. ':orders', nil, oid, ts, order_ret)
        capped_add(base .. ':lusers', uh, ts)
        capped_add(base .. ':lorders', oid, ts)
        if early then capped_add(base .. ':fraud', oid, math.max(ts, tonumber(early))) end
        local hk = ub .. ':hll:' .. e[1] .. ':' .. hour
        redis.call('PFADD', hk, e[2])
        redis.call('EXPIRE', hk, (hll_hours + 1) * HOUR)
        linked[#linked + 1] = e[2]
      else
        linked[#linked + 1] = ''
      end
    end
    if ARGV[i + 4] ~= '' or ARGV[i + 5] ~= '' or ARGV[i + 6] ~= '' then  -- for the label path (JOIN_LABELS)
      redis.call('SET', key('o', oid) .. ':ents', table.concat(linked, '|'), 'EX', ents_ttl)
    end
    for k = 0, n_lines - 1 do
      local item, qty = ARGV[i + 8 + 2 * k], ARGV[i + 9 + 2 * k]
      window_add(key('i', item) .. ':sales', nil, oid .. '|' .. qty, ts, sales_ret)
    end
  end
  i = i + 8 + 2 * n_lines
end
return out
"""

USER_CLICKS = KEYS + r"""
-- ARGV: user_hash, ts. Returns {views 5m, 1h, 24h, carts 5m, 1h, 24h, purchases 5m, 1h, 24h,
--   recent item count, funnel state, funnel transition counts (flat field, value),
--   category counts (flat member, score; top first)}
local ub, ts_s = key('u', ARGV[1]), ARGV[2]
local ts = tonumber(ts_s)
local out = {}
for _, action in ipairs({'view', 'add_to_cart', 'purchase'}) do
  for _, w in ipairs({300, 3600, 86400}) do
    out[#out + 1] = redis.call('ZCOUNT', ub .. ':c:' .. action, string.format('%.6f', ts - w), '(' .. ts_s)
  end
end
out[#out + 1] = redis.call('ZCARD', ub .. ':recent')
out[#out + 1] = redis.call('GET', ub .. ':funnel') or 'start'
out[#out + 1] = redis.call('HGETALL', KEY_FUNNEL)
out[#out + 1] = redis.call('ZREVRANGE', ub .. ':cats', 0, -1, 'WITHSCORES')
return out
"""

STORE_RECS = KEYS + r"""
-- ARGV: ttl, then per user: user_hash, json, cold ('1' or '0'), n, then n item ids.
-- Stores ss:rec:{h} (the JSON served over HTTP) and ss:rec:{h}:items (item -> cold flag,
-- for counting clicks on recommended items), both with the TTL.
local ttl, i, users = tonumber(ARGV[1]), 2, 0
while i <= #ARGV do
  local rk, n = key('rec', ARGV[i]), tonumber(ARGV[i + 3])
  redis.call('SET', rk, ARGV[i + 1], 'EX', ttl)
  redis.call('DEL', rk .. ':items')
  for k = 1, n do redis.call('HSET', rk .. ':items', ARGV[i + 3 + k], ARGV[i + 2]) end
  if n > 0 then redis.call('EXPIRE', rk .. ':items', ttl) end
  users = users + 1
  i = i + 4 + n
end
return users
"""

ITEMS = KEYS + r"""
-- ARGV: ts, then item ids. Returns per item: {views 1h, views 24h, carts 24h, purchases 24h,
--   catalog hash (flat field, value), sales members in the last 7 days}
local ts_s = ARGV[1]
local ts = tonumber(ts_s)
local before = '(' .. ts_s
local out = {}
for i = 2, #ARGV do
  local base = key('i', ARGV[i])
  out[#out + 1] = {
    redis.call('ZCOUNT', base .. ':c:view', string.format('%.6f', ts - 3600), before),
    redis.call('ZCOUNT', base .. ':c:view', string.format('%.6f', ts - 86400), before),
    redis.call('ZCOUNT', base .. ':c:add_to_cart', string.format('%.6f', ts - 86400), before),
    redis.call('ZCOUNT', base .. ':c:purchase', string.format('%.6f', ts - 86400), before),
    redis.call('HGETALL', base .. ':catalog'),
    redis.call('ZRANGEBYSCORE', base .. ':sales', string.format('%.6f', ts - 7 * 86400), before),
  }
end
return out
"""

REVENUE = KEYS + r"""
-- ARGV: ttl, retention (s), then (key, event ts, member) triples (keys built by features.keys): one member per order and item,
-- '{order_id}|{revenue}', so a redelivered order adds nothing; trimmed to the retention.
local ttl = tonumber(ARGV[1])
local keep = tonumber(ARGV[2])
for i = 3, #ARGV, 3 do
  local k = ARGV[i]
  redis.call('ZADD', k, ARGV[i + 1], ARGV[i + 2])
  redis.call('ZREMRANGEBYSCORE', k, '-inf', '(' .. string.format('%.6f', tonumber(ARGV[i + 1]) - keep))
  redis.call('EXPIRE', k, ttl)
end
return 0
"""

CATALOG = KEYS + r"""
-- ARGV: ttl, then (item id, price, cost, stock, event ts) 5-tuples. An entry older than the
-- item's stored one changes nothing (a redelivered or late catalog event must not undo a newer
-- one); its price is taken only when newer than the last price the pricing loop set
-- (price_changed_at), so an old price in the shop's feed does not revert an adjustment.
local ttl = tonumber(ARGV[1])
for i = 2, #ARGV, 5 do
  local ck = key('i', ARGV[i]) .. ':catalog'
  local ts = tonumber(ARGV[i + 4])
  local stored = tonumber(redis.call('HGET', ck, 'ts') or '-1e300')
  if ts >= stored then
    redis.call('HSET', ck, 'cost', ARGV[i + 2], 'stock', ARGV[i + 3], 'ts', ARGV[i + 4])
    if ts > tonumber(redis.call('HGET', ck, 'price_changed_at') or '-1e300') then
      redis.call('HSET', ck, 'price', ARGV[i + 1])
    end
  end
  redis.call('HSETNX', ck, 'ref_price', ARGV[i + 1])
  redis.call('EXPIRE', ck, ttl)
end
return 0
"""

COVIS = KEYS + r"""
-- ARGV: n, then item ids. Returns per item {epoch ('' = no counts), {neighbour, raw weight, ...}}:
-- the n strongest neighbours (ZREVRANGE: weight desc, ties by id desc); their value at time t is
-- raw * 2^((epoch - t) / half-life) (features.store.decay_factor).
local n, out = tonumber(ARGV[1]), {}
for i = 2, #ARGV do
  local k = key('cv', ARGV[i])
  out[#out + 1] = {redis.call('GET', k .. ':t') or '', redis.call('ZREVRANGE', k, 0, n - 1, 'WITHSCORES')}
end
return out
"""

RECORD_VERDICTS = KEYS + r"""
-- ARGV: verdict ttl, label ttl, then per order: order_id, verdict, learn record (JSON), event ts.
-- Per order, atomically: SET ss:v:{order_id} verdict NX EX <verdict ttl>, then
--   a verdict was already recorded -> {0, that verdict}: nothing else is stored;
--   an early label ss:l:{order_id} was waiting -> taken (deleted), {2, '1' | '0'}: the caller
--     learns at once, the learn record is not stored;
--   otherwise -> the learn record is stored (ss:o:{order_id}, label ttl) and the order pending
--     (ss:g:pending, member order_id, score event ts): {1, ''}.
local vttl, lttl, out = tonumber(ARGV[1]), tonumber(ARGV[2]), {}
for i = 3, #ARGV, 4 do
  local oid = ARGV[i]
  local vk = key('v', oid)
  if not redis.call('SET', vk, ARGV[i + 1], 'NX', 'EX', vttl) then
    out[#out + 1] = {0, redis.call('GET', vk)}
  else
    local lk = key('l', oid)
    local label = redis.call('GET', lk)
    if label then
      redis.call('DEL', lk)
      out[#out + 1] = {2, label}
    else
      redis.call('SET', key('o', oid), ARGV[i + 2], 'EX', lttl)
      redis.call('ZADD', KEY_PENDING, ARGV[i + 3], oid)
      out[#out + 1] = {1, ''}
    end
  end
end
return out
"""

JOIN_LABELS = KEYS + r"""
-- ARGV: label ttl, lifetime retention s, lifetime cap, then per label: order_id, '1' (fraud) | '0'
-- (legitimate), label ts (its arrival, event time).
-- Per order, atomically: takes (GETDEL) the order's learn record ss:o:{order_id} and removes the
-- order from ss:g:pending; with no record, keeps the label as an early label
-- (SET ss:l:{order_id} '1'|'0' EX <label ttl>) for RECORD_VERDICTS to take.
-- A fraud label also links the order's device / IP / card (ss:o:{order_id}:ents, written by ORDERS)
-- to fraud from the label's ts: ss:{kind}:{h}:fraud, order id -> label ts (the `cap` earliest kept);
-- when the order was not seen yet, ss:l:{order_id}:at keeps the label ts for ORDERS to link then.
-- Returns per label its learn record, or '' when there was none.
local ttl, life_ret, cap, out = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), {}
local KINDS = {'device', 'ip', 'card'}
for i = 4, #ARGV, 3 do
  local oid = ARGV[i]
  local rec = redis.call('GETDEL', key('o', oid))
  redis.call('ZREM', KEY_PENDING, oid)
  if rec then
    out[#out + 1] = rec
  else
    redis.call('SET', key('l', oid), ARGV[i + 1], 'EX', ttl)
    out[#out + 1] = ''
  end
  if ARGV[i + 1] == '1' then
    local ents = redis.call('GET', key('o', oid) .. ':ents')
    if ents then
      local n = 0
      for h in string.gmatch(ents .. '|', '([^|]*)|') do
        n = n + 1
        if h ~= '' then
          local fk = key(KINDS[n], h) .. ':fraud'
          redis.call('ZADD', fk, 'LT', ARGV[i + 2], oid)
          redis.call('ZREMRANGEBYRANK', fk, cap, -1)
          redis.call('EXPIRE', fk, life_ret)
        end
      end
    else
      redis.call('SET', key('l', oid) .. ':at', ARGV[i + 2], 'EX', ttl)
    end
  end
end
return out
"""
