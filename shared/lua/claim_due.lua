-- Webhook delivery's step: take the deliveries due now and push each one's time to the lease end, so a second
-- delivery process skips them and a killed one's attempt runs again after the lease. (shared/webhook_store.py)
-- KEYS: 1 webhook-due
-- args: now, limit, lease_end
-- Returns the delivery ids taken.
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', num(args.now), 'LIMIT', 0, args.limit)
for _, id in ipairs(ids) do redis.call('ZADD', KEYS[1], num(args.lease_end), id) end
return ids
