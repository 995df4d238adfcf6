-- A queued job's place in the model's dispatch order (jobs already in the worker queue first, then by stride
-- pass), with what its start estimate needs: the model's live workers and recent run times. The API answers
-- POST and GET with it. (shared/fairqueue.py calls it.)
-- KEYS: 1 dispatched:m, 2 pending:m:t, 3 ring:m, 4 vtime:m, 5 workers:m, 6 durations:m,
--       7.. pending:m:u for each tenant u in args.tenants (the ring's tenants as the caller believes them to be)
-- args: id, tenant, tenants, weights ({tenant: weight}), weight (the default), live_since (heartbeat time)
-- Returns {place (-1 if not waiting), live workers, {durations}}, or {'retry', ring members...} if the ring holds
-- a tenant not in args.tenants.
local index = ring_keys(KEYS[3], 7, 1)
if not index then return retry(KEYS[3]) end
local live = redis.call('ZCOUNT', KEYS[5], num(args.live_since), '+inf')
local durations = redis.call('LRANGE', KEYS[6], 0, -1)
local t = args.tenant
local place = -1
local rank = redis.call('ZRANK', KEYS[1], args.id)
if rank then
  place = rank
else
  local k = redis.call('ZRANK', KEYS[2], args.id)
  if k then
    local weights = args.weights
    local vtime = tonumber(redis.call('GET', KEYS[4]) or '0')
    local mine = tonumber(redis.call('ZSCORE', KEYS[3], t) or vtime)
    local v = mine + k / tonumber(weights[t] or args.weight)
    local ahead = redis.call('ZCARD', KEYS[1]) + k
    local entries = redis.call('ZRANGE', KEYS[3], 0, -1, 'WITHSCORES')
    for i = 1, #entries, 2 do
      local u, pass = entries[i], tonumber(entries[i + 1])
      if u ~= t then
        local w = tonumber(weights[u] or args.weight)
        local n = redis.call('ZCARD', KEYS[index[u]])
        -- u's i-th job goes at pass + i/w; count those before ours (ties go by tenant name).
        local span = (v - pass) * w
        local count
        if u < t then count = math.floor(span + 1e-9) + 1 else count = math.ceil(span - 1e-9) end
        ahead = ahead + math.max(0, math.min(n, count))
      end
    end
    place = ahead
  end
end
return {place, live, durations}
