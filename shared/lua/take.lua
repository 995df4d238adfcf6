-- The dispatcher's step: if the model's worker queue has room, take the next job by stride scheduling (the
-- tenant with the lowest pass, skipping tenants at their running cap), record it as dispatched and in the
-- dispatch journal, and return it; the dispatcher then sends its message. (shared/fairqueue.py calls it.)
-- KEYS: 1 dispatched:m, 2 dispatching:m (journal), 3 the broker queue (Celery's list), 4 ring:m, 5 passes:m,
--       6 vtime:m, 7 dseq:m, then for each tenant u in args.tenants: pending:m:u, active:u
-- args: tenants (the ring's tenants as the caller believes them to be), target (jobs allowed to wait in the worker queue), caps
--       ({tenant: max running}), cap (the default), weights ({tenant: weight}), weight (the default), now
-- Returns {job, tenant}, {} when there is no room or nothing to send, or {'retry', ring members...}.
-- Jobs counted as waiting in the worker queue: min(dispatched and not started, the broker list's length + sends
-- in flight), so a message a dead worker had taken holds no slot, nor does the leftover of a canceled job.
local index = ring_keys(KEYS[4], 8, 2)
if not index then return retry(KEYS[4]) end
local in_broker = redis.call('LLEN', KEYS[3]) + redis.call('HLEN', KEYS[2])
if math.min(redis.call('ZCARD', KEYS[1]), in_broker) >= args.target then return {} end
local entries = redis.call('ZRANGE', KEYS[4], 0, -1, 'WITHSCORES')
local skipped = {}
for i = 1, #entries, 2 do
  local t, pass = entries[i], tonumber(entries[i + 1])
  local pending, active = KEYS[index[t]], KEYS[index[t] + 1]
  if redis.call('SCARD', active) >= tonumber(args.caps[t] or args.cap) then
    table.insert(skipped, t)
  else
    -- Jobs leave `pending` as they leave `queued` (transition.lua), so its head is a job to send.
    local chosen = redis.call('ZPOPMIN', pending)[1]
    local next_pass = pass
    if chosen then next_pass = pass + 1 / tonumber(args.weights[t] or args.weight) end
    if redis.call('ZCARD', pending) == 0 then
      redis.call('ZREM', KEYS[4], t)
      redis.call('HSET', KEYS[5], t, num(next_pass))
    else
      redis.call('ZADD', KEYS[4], num(next_pass), t)
    end
    if chosen then
      redis.call('SET', KEYS[6], num(pass))
      -- A tenant skipped for its running cap earns no credit meanwhile.
      for _, s in ipairs(skipped) do
        if tonumber(redis.call('ZSCORE', KEYS[4], s)) < pass then redis.call('ZADD', KEYS[4], num(pass), s) end
      end
      redis.call('SADD', active, chosen)
      redis.call('ZADD', KEYS[1], redis.call('INCR', KEYS[7]), chosen)
      redis.call('HSET', KEYS[2], chosen, num(args.now))
      return {chosen, t}
    end
  end
end
return {}
