-- The jobs of one request (n >= 1, one tenant, one model), in one step: admission of all n to the tenant's queue
-- for its model and, only if all are admitted, their records and indexes (and the Idempotency-Key's entry). All or
-- none: either every record and its queue entry exist or nothing does; no job the client was refused can run, none
-- can sit stored but unqueued. (shared/fairqueue.py calls it: `create` is the case n = 1.)
-- KEYS: 1 jobs:t, 2 alljobs, 3 queued:m, 4 pending:m:t, 5 ring:m, 6 passes:m, 7 vtime:m, 8 tenants,
--       9 the Idempotency-Key's entry, 10 .. 9+n the n jobs (in args.ids' order),
--       10+n .. pending:M:t for every served model M (the tenant's waiting jobs)
-- args: ids (n), records (n JSON texts), created_at (n scores), tenant, max_waiting, idempotency (the entry's JSON,
--       or false), idempotency_ttl, wake (channel), model
-- Returns {1, waiting} when created (waiting counts the n), {0, waiting} when the n would pass the limit of the
-- tenant's queues (then nothing changed). A first record that already exists under its id (ids are fresh per
-- request) means this very script ran already, its answer lost and the command sent again: it answers as created
-- and changes nothing.
local n = #args.ids
if redis.call('EXISTS', KEYS[10]) == 1 then return {1, -1} end
local waiting = 0
for i = 10 + n, #KEYS do waiting = waiting + redis.call('ZCARD', KEYS[i]) end
if waiting + n > args.max_waiting then return {0, waiting} end
redis.call('SADD', KEYS[8], args.tenant)
join_ring(KEYS[5], KEYS[6], KEYS[7], args.tenant)
for i = 1, n do
  local id, score = args.ids[i], num(args.created_at[i])
  redis.call('SET', KEYS[9 + i], args.records[i])
  for _, index in ipairs({KEYS[4], KEYS[1], KEYS[2], KEYS[3]}) do redis.call('ZADD', index, score, id) end
end
if args.idempotency then redis.call('SET', KEYS[9], args.idempotency, 'EX', args.idempotency_ttl) end
redis.call('PUBLISH', args.wake, args.model)
return {1, waiting + n}
