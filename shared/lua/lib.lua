-- Prepended to every wanq script by shared/lua/__init__.py: the named arguments and the helpers they share.
-- Every key comes in KEYS (shared/keys.py names them all); every other argument is one JSON object, ARGV[1].
local args = cjson.decode(ARGV[1])

-- Scores and passes round-trip exactly.
local function num(x)
  return string.format('%.17g', x)
end

-- A tenant joins a model's ring at the virtual time, or at its saved pass if that is later: it neither waits
-- behind other tenants' backlog nor brings saved-up credit (shared/fairqueue.py).
local function join_ring(ring, passes, vtime, tenant)
  if not redis.call('ZSCORE', ring, tenant) then
    local saved = tonumber(redis.call('HGET', passes, tenant) or '0')
    local now = tonumber(redis.call('GET', vtime) or '0')
    redis.call('ZADD', ring, num(math.max(saved, now)), tenant)
  end
end

-- Scripts that visit every tenant of a model's ring get their keys from the caller, who reads the ring first:
-- args.tenants lists the tenants it passed keys for, `per_tenant` keys each, in KEYS from index `first`.
-- Returns a map tenant -> index of its first key, or nil if the ring holds a tenant the caller did not pass
-- (one joined meanwhile: the script then answers {'retry', ring members...} and the caller asks again).
local function ring_keys(ring, first, per_tenant)
  local index = {}
  for i, t in ipairs(args.tenants) do index[t] = first + (i - 1) * per_tenant end
  for _, t in ipairs(redis.call('ZRANGE', ring, 0, -1)) do
    if not index[t] then return nil end
  end
  return index
end

-- The answer that asks the caller to read the ring again: 'retry', then its tenants.
local function retry(ring)
  local members = redis.call('ZRANGE', ring, 0, -1)
  table.insert(members, 1, 'retry')
  return members
end
