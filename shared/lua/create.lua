-- A new job, in one step: admission to its tenant's queue for its model and, only if admitted, its record and
-- indexes (and the Idempotency-Key's entry). Either the record and its queue entry both exist or neither does:
-- no job the client was refused can run, none can sit stored but unqueued. (shared/fairqueue.py calls it.)
-- KEYS: 1 job, 2 jobs:t, 3 alljobs, 4 queued:m, 5 pending:m:t, 6 ring:m, 7 passes:m, 8 vtime:m, 9 tenants,
--       10 the Idempotency-Key's entry, 11.. pending:M:t for every served model M (the tenant's waiting jobs)
-- args: id, tenant, record (JSON), created_at, max_waiting, idempotency (the entry's JSON, or false), idempotency_ttl,
--       wake (channel), model
-- Returns {1, waiting} when created, {0, waiting} when the tenant's queues are full. A record that already exists
-- under this id (ids are fresh per request) means this very script ran already, its answer lost and the command
-- sent again: it answers as created and changes nothing.
if redis.call('EXISTS', KEYS[1]) == 1 then return {1, -1} end
local waiting = 0
for i = 11, #KEYS do waiting = waiting + redis.call('ZCARD', KEYS[i]) end
if waiting >= args.max_waiting then return {0, waiting} end
redis.call('ZADD', KEYS[5], num(args.created_at), args.id)
redis.call('SADD', KEYS[9], args.tenant)
join_ring(KEYS[6], KEYS[7], KEYS[8], args.tenant)
redis.call('SET', KEYS[1], args.record)
redis.call('ZADD', KEYS[2], num(args.created_at), args.id)
redis.call('ZADD', KEYS[3], num(args.created_at), args.id)
redis.call('ZADD', KEYS[4], num(args.created_at), args.id)
if args.idempotency then redis.call('SET', KEYS[10], args.idempotency, 'EX', args.idempotency_ttl) end
redis.call('PUBLISH', args.wake, args.model)
return {1, waiting + 1}
