"""Server-side scripts of the feature store (Lua, run by Redis / Valkey).

One script call handles a whole chunk of events, so the client pays one command per
chunk instead of ~10 per event (redis-py spends ~45 us per command). Each call is
atomic: a crash never leaves half an event written. Scripts touch keys they compute
from their arguments, so the store needs a standalone Redis (not Redis Cluster).

Invariants kept here (see :mod:`features.store` for the key layout):

* windowed members are keyed by the event's own id: re-running a script for an event
  changes nothing;
* the aggregates that are not idempotent by construction (``ss:popular`` view counts,
  ``ss:funnel`` transition counts, ``ss:u:{h}:cats`` category counts, ``ss:cv:{item}``
  co-visitation weights) run only the first time an event id is seen
  (``ss:seen:{event_id}``, kept ``seen_ttl`` seconds);
* order reads run before that order's writes and count only members with score < ts.
"""

CLICKS = r"""
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
local function window_add(key, member, ts)
  redis.call('ZADD', key, ts, member)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', string.format('(%.6f', ts - ret))
  redis.call('EXPIRE', key, ttl)
end
-- co-visitation: weight w of neighbour b added to item a at ts, stored relative to a's epoch
-- (ss:cv:{a}:t): raw += w * 2^((ts - epoch) / half-life); rescaled to a new epoch when it grows large.
-- Epochs are read once per item per call (cv_epoch) and TTLs refreshed once at the end (cv_touched):
-- per pair only the increment and the trim run (clicks are the hottest path).
local cv_epoch, cv_touched = {}, {}
local function covis_add(a, b, w, ts, ts_s)
  local key = 'ss:cv:' .. a
  local epoch = cv_epoch[a]
  if epoch == nil then
    epoch = tonumber(redis.call('GET', key .. ':t'))
    if not epoch then
      epoch = ts
      redis.call('SET', key .. ':t', ts_s, 'EX', ttl)
    end
    cv_touched[#cv_touched + 1] = a
  end
  if cv_hl > 0 and ts - epoch > cv_rescale * cv_hl then
    redis.call('ZUNIONSTORE', key, 1, key, 'WEIGHTS', string.format('%.17g', 2 ^ ((epoch - ts) / cv_hl)))
    epoch = ts
    redis.call('SET', key .. ':t', ts_s, 'EX', ttl)
  end
  cv_epoch[a] = epoch
  local inc = w
  if cv_hl > 0 then inc = w / (2 ^ ((epoch - ts) / cv_hl)) end
  redis.call('ZINCRBY', key, string.format('%.17g', inc), b)
  redis.call('ZREMRANGEBYRANK', key, 0, -(cv_keep + 1))
end
for i = 12, #ARGV, 6 do
  local eid, uh, item, action, ts, cat = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], tonumber(ARGV[i + 4]), ARGV[i + 5]
  window_add('ss:u:' .. uh .. ':c:' .. action, eid, ts)
  window_add('ss:i:' .. item .. ':c:' .. action, eid, ts)
  if action == 'view' then
    local rk = 'ss:u:' .. uh .. ':recent'
    redis.call('ZADD', rk, 'GT', ts, item)
    redis.call('ZREMRANGEBYRANK', rk, 0, -(keep + 1))
    redis.call('EXPIRE', rk, ttl)
  end
  if redis.call('SET', 'ss:seen:' .. eid, '1', 'NX', 'EX', seen_ttl) then
    if action == 'view' then
      redis.call('ZINCRBY', 'ss:popular', 1, item)
      redis.call('EXPIRE', 'ss:popular', ttl)
      if cv_on then  -- pairs with the user's previous distinct views of the last cv_gap seconds, newest first
        local prev = redis.call('ZREVRANGEBYSCORE', 'ss:u:' .. uh .. ':recent', '(' .. ARGV[i + 4],
                                string.format('%.6f', ts - cv_gap), 'LIMIT', 0, cv_window)
        for d, p in ipairs(prev) do
          if p ~= item then
            covis_add(p, item, 1 / d, ts, ARGV[i + 4])
            covis_add(item, p, 1 / d, ts, ARGV[i + 4])
          end
        end
      end
      if cat ~= '' then
        local ck = 'ss:u:' .. uh .. ':cats'
        redis.call('ZINCRBY', ck, 1, cat)
        redis.call('EXPIRE', ck, ttl)
      end
    end
    local rec = redis.call('HGET', 'ss:rec:' .. uh .. ':items', item)
    if rec then hits[rec == '1' and 2 or 1] = hits[rec == '1' and 2 or 1] + 1 end
    local fk = 'ss:u:' .. uh .. ':funnel'
    local from = redis.call('GET', fk) or 'start'
    local to = STATE[action]
    redis.call('HINCRBY', 'ss:funnel', from .. '>' .. to, 1)
    redis.call('EXPIRE', 'ss:funnel', ttl)
    redis.call('SET', fk, to, 'EX', ttl)
  end
  if not seen_users[uh] then
    seen_users[uh] = true
    users[#users + 1] = uh
  end
end
local out = {}
for n, uh in ipairs(users) do
  out[n] = redis.call('ZREVRANGE', 'ss:u:' .. uh .. ':recent', 0, ret_n - 1)
end
out[#out + 1] = hits
for _, a in ipairs(cv_touched) do
  redis.call('EXPIRE', 'ss:cv:' .. a, ttl)
  redis.call('EXPIRE', 'ss:cv:' .. a .. ':t', ttl)
end
return out
"""

ORDERS = r"""
-- ARGV: ttl, write ('1' = read then write, '0' = read only), then per order:
--       order_id, user_hash, amount, ts, device_hash, ip_hash, card_hash ('' = none), n_lines,
--       then n_lines pairs item_id, quantity
-- Returns per order: {user history (flat member, score), then for device, ip, card:
--   users_30d, orders_10m, orders_1h, orders_24h (0 when absent), then the user's distinct
--   devices, IPs and cards over the 24 full hours before the order's hour (HyperLogLog)}
local ttl, write = tonumber(ARGV[1]), ARGV[2] == '1'
local DAY, HOUR = 86400, 3600
local function bound(x) return string.format('%.6f', x) end
local function window_add(key, flag, member, ts, retention)
  if flag then redis.call('ZADD', key, flag, ts, member) else redis.call('ZADD', key, ts, member) end
  redis.call('ZREMRANGEBYSCORE', key, '-inf', '(' .. bound(ts - retention))
  redis.call('EXPIRE', key, ttl)
end
local out, i = {}, 3
while i <= #ARGV do
  local oid, uh, amount, ts_s = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local ts = tonumber(ts_s)
  local ents = {{'device', ARGV[i + 4]}, {'ip', ARGV[i + 5]}, {'card', ARGV[i + 6]}}
  local n_lines = tonumber(ARGV[i + 7])
  local before = '(' .. ts_s
  local uk = 'ss:u:' .. uh .. ':orders'
  local reply = {redis.call('ZRANGEBYSCORE', uk, bound(ts - 30 * DAY), before, 'WITHSCORES')}
  for _, e in ipairs(ents) do
    if e[2] == '' then
      for _ = 1, 4 do reply[#reply + 1] = 0 end
    else
      local base = 'ss:' .. e[1] .. ':' .. e[2]
      reply[#reply + 1] = redis.call('ZCOUNT', base .. ':users', bound(ts - 30 * DAY), before)
      for _, w in ipairs({600, HOUR, DAY}) do
        reply[#reply + 1] = redis.call('ZCOUNT', base .. ':orders', bound(ts - w), before)
      end
    end
  end
  local hour = math.floor(ts / HOUR)
  for _, e in ipairs(ents) do
    local keys = {}
    for h = hour - 24, hour - 1 do keys[#keys + 1] = 'ss:u:' .. uh .. ':hll:' .. e[1] .. ':' .. h end
    reply[#reply + 1] = redis.call('PFCOUNT', unpack(keys))
  end
  out[#out + 1] = reply
  if write then
    window_add(uk, nil, oid .. '|' .. amount, ts, 30 * DAY)
    for _, e in ipairs(ents) do
      if e[2] ~= '' then
        local base = 'ss:' .. e[1] .. ':' .. e[2]
        window_add(base .. ':users', 'LT', uh, ts, 30 * DAY)
        window_add(base .. ':orders', nil, oid, ts, 30 * DAY)
        local hk = 'ss:u:' .. uh .. ':hll:' .. e[1] .. ':' .. hour
        redis.call('PFADD', hk, e[2])
        redis.call('EXPIRE', hk, 25 * HOUR)
      end
    end
    for k = 0, n_lines - 1 do
      local item, qty = ARGV[i + 8 + 2 * k], ARGV[i + 9 + 2 * k]
      window_add('ss:i:' .. item .. ':sales', nil, oid .. '|' .. qty, ts, 7 * DAY)
    end
  end
  i = i + 8 + 2 * n_lines
end
return out
"""

USER_CLICKS = r"""
-- ARGV: user_hash, ts. Returns {views 5m, 1h, 24h, carts 5m, 1h, 24h, purchases 5m, 1h, 24h,
--   recent item count, funnel state, funnel transition counts (flat field, value),
--   category counts (flat member, score; top first)}
local uh, ts_s = ARGV[1], ARGV[2]
local ts = tonumber(ts_s)
local out = {}
for _, action in ipairs({'view', 'add_to_cart', 'purchase'}) do
  for _, w in ipairs({300, 3600, 86400}) do
    out[#out + 1] = redis.call('ZCOUNT', 'ss:u:' .. uh .. ':c:' .. action, string.format('%.6f', ts - w), '(' .. ts_s)
  end
end
out[#out + 1] = redis.call('ZCARD', 'ss:u:' .. uh .. ':recent')
out[#out + 1] = redis.call('GET', 'ss:u:' .. uh .. ':funnel') or 'start'
out[#out + 1] = redis.call('HGETALL', 'ss:funnel')
out[#out + 1] = redis.call('ZREVRANGE', 'ss:u:' .. uh .. ':cats', 0, -1, 'WITHSCORES')
return out
"""

STORE_RECS = r"""
-- ARGV: ttl, then per user: user_hash, json, cold ('1' or '0'), n, then n item ids.
-- Stores ss:rec:{h} (the JSON served over HTTP) and ss:rec:{h}:items (item -> cold flag,
-- for counting clicks on recommended items), both with the TTL.
local ttl, i, users = tonumber(ARGV[1]), 2, 0
while i <= #ARGV do
  local key, n = 'ss:rec:' .. ARGV[i], tonumber(ARGV[i + 3])
  redis.call('SET', key, ARGV[i + 1], 'EX', ttl)
  redis.call('DEL', key .. ':items')
  for k = 1, n do redis.call('HSET', key .. ':items', ARGV[i + 3 + k], ARGV[i + 2]) end
  if n > 0 then redis.call('EXPIRE', key .. ':items', ttl) end
  users = users + 1
  i = i + 4 + n
end
return users
"""

ITEMS = r"""
-- ARGV: ts, then item ids. Returns per item: {views 1h, views 24h, carts 24h, purchases 24h,
--   catalog hash (flat field, value), sales members in the last 7 days}
local ts_s = ARGV[1]
local ts = tonumber(ts_s)
local before = '(' .. ts_s
local out = {}
for i = 2, #ARGV do
  local base = 'ss:i:' .. ARGV[i]
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

REVENUE = r"""
-- ARGV: ttl, retention (s), then (key, event ts, member) triples: one member per order and item,
-- '{order_id}|{revenue}', so a redelivered order adds nothing; trimmed to the retention.
local ttl = tonumber(ARGV[1])
local keep = tonumber(ARGV[2])
for i = 3, #ARGV, 3 do
  local key = ARGV[i]
  redis.call('ZADD', key, ARGV[i + 1], ARGV[i + 2])
  redis.call('ZREMRANGEBYSCORE', key, '-inf', '(' .. string.format('%.6f', tonumber(ARGV[i + 1]) - keep))
  redis.call('EXPIRE', key, ttl)
end
return 0
"""

CATALOG = r"""
-- ARGV: ttl, then (item id, price, cost, stock, event ts) 5-tuples. An entry older than the
-- item's stored one changes nothing (a redelivered or late catalog event must not undo a newer
-- one); its price is taken only when newer than the last price the pricing loop set
-- (price_changed_at), so an old price in the shop's feed does not revert an adjustment.
local ttl = tonumber(ARGV[1])
for i = 2, #ARGV, 5 do
  local key = 'ss:i:' .. ARGV[i] .. ':catalog'
  local ts = tonumber(ARGV[i + 4])
  local stored = tonumber(redis.call('HGET', key, 'ts') or '-1e300')
  if ts >= stored then
    redis.call('HSET', key, 'cost', ARGV[i + 2], 'stock', ARGV[i + 3], 'ts', ARGV[i + 4])
    if ts > tonumber(redis.call('HGET', key, 'price_changed_at') or '-1e300') then
      redis.call('HSET', key, 'price', ARGV[i + 1])
    end
  end
  redis.call('HSETNX', key, 'ref_price', ARGV[i + 1])
  redis.call('EXPIRE', key, ttl)
end
return 0
"""

COVIS = r"""
-- ARGV: n, then item ids. Returns per item {epoch ('' = no counts), {neighbour, raw weight, ...}}:
-- the n strongest neighbours (ZREVRANGE: weight desc, ties by id desc); their value at time t is
-- raw * 2^((epoch - t) / half-life) (features.store.decay_factor).
local n, out = tonumber(ARGV[1]), {}
for i = 2, #ARGV do
  local key = 'ss:cv:' .. ARGV[i]
  out[#out + 1] = {redis.call('GET', key .. ':t') or '', redis.call('ZREVRANGE', key, 0, n - 1, 'WITHSCORES')}
end
return out
"""
