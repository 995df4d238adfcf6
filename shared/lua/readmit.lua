-- The reconciler's repair of a queued job that is in none of the places a queued job must be in: its tenant's
-- queue, the dispatch journal, the broker's queue or its delivered-but-unacknowledged messages. It goes back
-- into its tenant's queue (as create.lua puts a new job there). Checked again here, atomically, so a job that
-- moved on since the reconciler looked is left alone. (upkeep's reconciler, api/daemons/upkeep.py, calls it.)
-- KEYS: 1 job, 2 pending:m:t, 3 ring:m, 4 passes:m, 5 vtime:m, 6 dispatched:m, 7 dispatching:m, 8 the broker
--       queue, 9 the broker's unacked hash, 10 tenants, 11 active:t
-- args: id, wake (channel), model
-- Returns 1 if the job was put back, 0 if it needed nothing.
local raw = redis.call('GET', KEYS[1])
if not raw then return 0 end
local job = cjson.decode(raw)
if job.status ~= 'queued' then return 0 end
if redis.call('ZSCORE', KEYS[2], args.id) or redis.call('HEXISTS', KEYS[7], args.id) == 1 then return 0 end
-- A Celery message names its job in its headers (argsrepr), as plain text.
for _, message in ipairs(redis.call('LRANGE', KEYS[8], 0, -1)) do
  if string.find(message, args.id, 1, true) then return 0 end
end
for _, message in ipairs(redis.call('HVALS', KEYS[9])) do
  if string.find(message, args.id, 1, true) then return 0 end
end
redis.call('ZREM', KEYS[6], args.id)
-- No longer dispatched, so no longer one of its tenant's running jobs either (take.lua adds it again when it
-- sends it): a lost message must not hold a place under the tenant's max_running_jobs for good.
redis.call('SREM', KEYS[11], args.id)
redis.call('ZADD', KEYS[2], num(job.created_at), args.id)
redis.call('SADD', KEYS[10], job.tenant)
join_ring(KEYS[3], KEYS[4], KEYS[5], job.tenant)
redis.call('PUBLISH', args.wake, args.model)
return 1
