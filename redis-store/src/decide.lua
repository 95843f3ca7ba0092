-- quorate's counter algorithms, run atomically inside Redis: one call decides a batch of
-- hits, in order, exactly as quorate-algorithms' CounterStore::check_capped does in memory.
--
-- Redis runs Lua 5.1, whose only number is a double: integers are exact below 2^53 only.
-- So no absolute instant in nanoseconds (about 1.8e18) ever becomes a Lua number:
-- - window-aligned algorithms get `now` from the caller as (slot index, offset in slot),
--   both computed exactly in Rust;
-- - the token bucket and the sliding log get `now` as (high, low) 32-bit halves and keep
--   their instants that way; only differences (< 2^52 by the rate checks in Rust) become
--   plain numbers;
-- - products of two numbers go through `muldiv`, exact for any operands below 2^53.
-- The Rust side (src/store.rs, `RedisRate::check`) refuses rates for which these bounds
-- could be exceeded.
--
-- KEYS, per hit i (two each): counter key, the limit's key index (a sorted set).
-- ARGV: now_hi, now_lo, then per hit 10 values:
--   algorithm (f = fixed window, s = sliding window in slots, t = token bucket, l = log),
--   limit, window, burst, precision, cost (clamped by the caller to capacity + 1),
--   max_keys (-1 = no cap), on_full (r = refuse, e = evict idlest),
--   slot index of now, offset of now in its slot.
-- Returns 7 integers per hit: allowed, limit, remaining, reset_after, retry_after (-1 =
-- none), deny reason (0 none, 1 over limit, 2 cost exceeds limit, 3 limit keys full),
-- evicted (0/1).

local TWO32 = 4294967296
local BIG = 4503599627370496 -- 2^52: "longer than any window"; never reached in range
local TTL_SLACK_MS = tonumber(ARGV[3])

-- x = q*c + r, 0 <= r < c, exact for integers x < 2^53, c >= 1.
local function divmod(x, c)
  local q = math.floor(x / c)
  local r = x - q * c
  while r < 0 do q = q - 1; r = r + c end
  while r >= c do q = q + 1; r = r - c end
  return q, r
end

-- a*b = q*c + r exactly, for integers 0 <= a, b < 2^53 and 1 <= c <= 2^52. q is exact
-- whenever it is below 2^53 (larger quotients come out approximately, never smaller
-- than 2^53).
local function muldiv(a, b, c)
  local p = a * b
  if p < 9007199254740992 then return divmod(p, c) end
  local qa, ra = divmod(a, c)
  local qb, rb = divmod(b, c)
  -- (qa c + ra)(qb c + rb) = (qa qb c + qa rb + ra qb) c + ra rb; ra rb by doubling.
  local q, r = 0, 0
  for i = 52, 0, -1 do
    q = q * 2; r = r * 2
    if r >= c then r = r - c; q = q + 1 end
    if math.floor(rb / 2 ^ i) % 2 == 1 then
      r = r + ra
      if r >= c then r = r - c; q = q + 1 end
    end
  end
  return qa * qb * c + qa * rb + ra * qb + q, r
end

local function mul_div_floor(a, b, c)
  local q = muldiv(a, b, c)
  return q
end

local function mul_div_ceil(a, b, c)
  local q, r = muldiv(a, b, c)
  if r > 0 then q = q + 1 end
  return q
end

local function pos(x) if x > 0 then return x end return 0 end
local function span(k, unit) -- k*unit, capped at BIG (k >= 0)
  if k > 0 and k > BIG / unit then return BIG end
  return k * unit
end

-- The least e in [0, window] with floor(count*(window - e)/window) <= room
-- (sliding_window::elapsed_needed).
local function elapsed_needed(count, room, window)
  if count == 0 then return 0 end
  local q, r = muldiv(room + 1, window, count)
  if r == 0 then q = q - 1 end
  if q > window then q = window end
  return window - q
end

-- Instants as (high, low) 32-bit halves.
local function tsub(ah, al, bh, bl) -- a - b, clamped to [-BIG, BIG]
  local dh = ah - bh
  if dh > 1000000 then return BIG elseif dh < -1000000 then return -BIG end
  local d = dh * TWO32 + (al - bl)
  if d > BIG then return BIG elseif d < -BIG then return -BIG end
  return d
end
local function tadd(h, l, d) -- a + d, d >= 0
  local s = l + d
  local carry = math.floor(s / TWO32)
  return h + carry, s - carry * TWO32
end

local function decision(allowed, limit, remaining, reset_after, retry_after, reason)
  return { allowed, limit, remaining, reset_after, retry_after, reason }
end
local function allow(limit, remaining, reset_after)
  return decision(1, limit, remaining, reset_after, -1, 0)
end
local function over_limit(limit, remaining, reset_after, retry_after)
  return decision(0, limit, remaining, reset_after, retry_after, 1)
end
local function cost_exceeds(limit, remaining, reset_after)
  return decision(0, limit, remaining, reset_after, -1, 2)
end

-- === algorithms ===
-- Each takes (state or nil, hit) and returns (decision, new state or nil when unchanged,
-- time from now until the new state is idle).

-- fixed_window.rs. State: { window index, count }.
local function fixed_window(st, h)
  local limit, window = h.limit, h.window
  local start, used = h.idx, 0
  if st and st[2] > 0 and h.idx <= st[1] then start, used = st[1], st[2] end
  local to_end = span(start - h.idx, window) + window - h.el
  local remaining = pos(limit - used)
  local reset_after = to_end
  if used == 0 then reset_after = 0 end
  if h.cost == 0 then return allow(limit, remaining, reset_after) end
  if h.cost > limit then return cost_exceeds(limit, remaining, reset_after) end
  if h.cost > remaining then return over_limit(limit, remaining, reset_after, to_end) end
  return allow(limit, remaining - h.cost, to_end), { start, used + h.cost }, to_end
end

-- sliding_slots.rs (and sliding_window.rs, which is the same machine with one slot).
-- State: { newest slot index, count[age 0], ..., count[age n] }.
local function sliding(st, h)
  local limit, n = h.limit, h.precision
  local slot = h.window / n
  local stored = -1
  if st then stored = st[1] end
  local start, shift, elapsed = h.idx, n + 1, h.el
  if st == nil then shift = n + 1
  elseif h.idx <= stored then
    start, shift = stored, 0
    if h.idx < stored then elapsed = 0 end
  else
    shift = math.min(h.idx - stored, n + 1)
  end
  local function count_at(age)
    local stored_age = age - shift
    if st == nil or stored_age < 0 then return 0 end
    return st[2 + stored_age] or 0
  end
  local full = 0
  for age = 0, n - 1 do full = full + count_at(age) end
  local partial = count_at(n)
  local estimate = full + mul_div_floor(partial, slot - elapsed, slot)
  local remaining = pos(limit - estimate)
  -- Time from now to an instant `start + k` (k >= 0), clamped at zero.
  local start_from_now = span(start - h.idx, slot) - h.el
  local reset_after = 0
  for age = 0, n do
    local c = count_at(age)
    if c > 0 then
      reset_after = pos(start_from_now + span(n - age, slot) + elapsed_needed(c, 0, slot))
      break
    end
  end
  if h.cost == 0 then return allow(limit, remaining, reset_after) end
  if h.cost > limit then return cost_exceeds(limit, remaining, reset_after) end
  if h.cost > remaining then
    local room = limit - h.cost
    local f = full
    local at = span(n + 1, slot)
    for j = 0, n do
      local decaying = count_at(n - j)
      if f <= room then
        at = span(j, slot) + elapsed_needed(decaying, room - f, slot)
        break
      end
      if j < n then f = pos(f - count_at(n - 1 - j)) end
    end
    return over_limit(limit, remaining, reset_after, pos(start_from_now + at))
  end
  local new = { start }
  for age = 0, n do new[2 + age] = count_at(age) end
  new[2] = new[2] + h.cost
  local reset = pos(start_from_now + span(n, slot) + elapsed_needed(new[2], 0, slot))
  return allow(limit, remaining - h.cost, reset), new, start_from_now + span(n + 1, slot)
end

-- token_bucket.rs (GCRA). State: { tat high, tat low }.
local function token_bucket(st, h)
  local burst, limit, window = h.burst, h.limit, h.window
  local th, tl = 0, 0
  if st then th, tl = st[1], st[2] end
  local function tokens_left(debt)
    local c = mul_div_ceil(debt, limit, window)
    if c >= burst then return 0 end
    return burst - c
  end
  local debt = pos(tsub(th, tl, h.nh, h.nl))
  local remaining = tokens_left(debt)
  if h.cost == 0 then return allow(burst, remaining, debt) end
  if h.cost > burst then return cost_exceeds(burst, remaining, debt) end
  if h.cost > remaining then
    local slack = mul_div_floor(burst - h.cost, window, limit)
    return over_limit(burst, remaining, debt, pos(tsub(th, tl, h.nh, h.nl) - slack))
  end
  local increment = mul_div_ceil(h.cost, window, limit)
  if tsub(th, tl, h.nh, h.nl) < 0 then th, tl = h.nh, h.nl end
  th, tl = tadd(th, tl, increment)
  debt = pos(tsub(th, tl, h.nh, h.nl))
  return allow(burst, tokens_left(debt), debt), { th, tl }, debt
end

-- sliding_log.rs. State: { total, at high, at low, cost, at high, at low, cost, ... },
-- oldest entry first.
local MAX_LOG_ENTRIES = 10000
local function sliding_log(st, h)
  local limit, window = h.limit, h.window
  st = st or { 0 }
  local entries = (#st - 1) / 3
  local function at(i) return st[2 + 3 * (i - 1)], st[3 + 3 * (i - 1)] end
  local function cost_of(i) return st[4 + 3 * (i - 1)] end
  -- The view's instant: max(now, newest entry).
  local vh, vl = h.nh, h.nl
  if entries > 0 then
    local nh, nl = at(entries)
    if tsub(nh, nl, vh, vl) > 0 then vh, vl = nh, nl end
  end
  local expired, expired_cost = 0, 0
  for i = 1, entries do
    local ah, al = at(i)
    if tsub(vh, vl, ah, al) < window then break end
    expired = expired + 1
    expired_cost = expired_cost + cost_of(i)
  end
  local in_window = pos(st[1] - expired_cost)
  local remaining = pos(limit - in_window)
  local reset_after = 0
  if entries > 0 and in_window > 0 then
    local nh, nl = at(entries)
    reset_after = pos(tsub(nh, nl, h.nh, h.nl) + window)
  end
  if h.cost == 0 then return allow(limit, remaining, reset_after) end
  if h.cost > limit then return cost_exceeds(limit, remaining, reset_after) end
  if h.cost > remaining then
    local iw = in_window
    local retry = pos(tsub(vh, vl, h.nh, h.nl) + window)
    for i = expired + 1, entries do
      iw = pos(iw - cost_of(i))
      if iw + h.cost <= limit then
        local ah, al = at(i)
        retry = pos(tsub(ah, al, h.nh, h.nl) + window)
        break
      end
    end
    return over_limit(limit, remaining, reset_after, retry)
  end
  local new = { st[1] - expired_cost + h.cost }
  for i = expired + 1, entries do
    local ah, al = at(i)
    new[#new + 1] = ah; new[#new + 1] = al; new[#new + 1] = cost_of(i)
  end
  local last = #new
  if last > 1 and new[last - 2] == vh and new[last - 1] == vl then
    new[last] = new[last] + h.cost
  else
    new[last + 1] = vh; new[last + 2] = vl; new[last + 3] = h.cost
  end
  -- Bound memory like the in-memory log: fold the oldest entries into their successors.
  local max_entries = math.max(1, math.min(limit, MAX_LOG_ENTRIES))
  while (#new - 1) / 3 > max_entries do
    new[7] = new[7] + new[4]
    table.remove(new, 2); table.remove(new, 2); table.remove(new, 2)
  end
  local to_idle = pos(tsub(vh, vl, h.nh, h.nl) + window)
  return allow(limit, remaining - h.cost, to_idle), new, to_idle
end

local ALGORITHMS = { f = fixed_window, s = sliding, t = token_bucket, l = sliding_log }

-- === the key index of a capped limit ===
-- Members are "<idle_at as 16 hex digits><counter key>": lexical order is (idle_at, key),
-- the in-memory index's order, and exact (a sorted-set score is a double).
local function hex_instant(h, l) return string.format("%08x%08x", h, l) end

-- Drops the limit's idle counters (idle_at <= now), as CounterStore::sweep.
local function sweep(index, nh, nl)
  local after_h, after_l = tadd(nh, nl, 1)
  local idle = redis.call("ZRANGEBYLEX", index, "-", "(" .. hex_instant(after_h, after_l))
  for _, member in ipairs(idle) do
    redis.call("DEL", string.sub(member, 17))
    redis.call("ZREM", index, member)
  end
end

-- Makes room for one new key; returns (ok, evicted).
local function make_room(index, h)
  local len = redis.call("ZCARD", index)
  if len < h.max_keys then return true, false end
  sweep(index, h.nh, h.nl)
  len = redis.call("ZCARD", index)
  if len < h.max_keys then return true, false end
  if h.on_full == "r" or h.max_keys == 0 then return false, false end
  while len >= h.max_keys do
    local oldest = redis.call("ZRANGE", index, 0, 0)
    if #oldest == 0 then break end
    redis.call("DEL", string.sub(oldest[1], 17))
    redis.call("ZREM", index, oldest[1])
    len = len - 1
  end
  return true, true
end

local out = {}
local nh, nl = tonumber(ARGV[1]), tonumber(ARGV[2])
local nhits = #KEYS / 2
for i = 1, nhits do
  local key, index = KEYS[2 * i - 1], KEYS[2 * i]
  local a = 3 + (i - 1) * 10
  local h = {
    algorithm = ARGV[a + 1], limit = tonumber(ARGV[a + 2]), window = tonumber(ARGV[a + 3]),
    burst = tonumber(ARGV[a + 4]), precision = tonumber(ARGV[a + 5]),
    cost = tonumber(ARGV[a + 6]), max_keys = tonumber(ARGV[a + 7]), on_full = ARGV[a + 8],
    idx = tonumber(ARGV[a + 9]), el = tonumber(ARGV[a + 10]), nh = nh, nl = nl,
  }
  local capped = h.max_keys >= 0
  local raw = redis.call("GET", key)
  local st, old_member = nil, nil
  if raw then
    st = cmsgpack.unpack(raw)
    -- A capped counter carries its index member first.
    if type(st[1]) == "string" then old_member = table.remove(st, 1) end
  end
  local d, new, to_idle = ALGORITHMS[h.algorithm](st, h)
  local evicted = false
  if new and st == nil and capped then
    local ok
    ok, evicted = make_room(index, h)
    if not ok then
      d = decision(0, d[2], 0, 0, -1, 3)
      new = nil
    end
  end
  if new then
    local ttl = math.ceil(to_idle / 1000000) + TTL_SLACK_MS
    if capped then
      local ih, il = tadd(nh, nl, pos(to_idle))
      local member = hex_instant(ih, il) .. key
      if old_member and old_member ~= member then redis.call("ZREM", index, old_member) end
      redis.call("ZADD", index, 0, member)
      table.insert(new, 1, member)
      if redis.call("PTTL", index) < ttl then redis.call("PEXPIRE", index, ttl) end
    end
    redis.call("SET", key, cmsgpack.pack(new), "PX", ttl)
  end
  for _, v in ipairs(d) do out[#out + 1] = v end
  out[#out + 1] = evicted and 1 or 0
end
return out
