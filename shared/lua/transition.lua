-- A job's state change: the only write of a job record after its creation (shared/jobstate.py calls it).
-- Checks the allowed statuses and the guards (e.g. the run's attempt), applies the patch, keeps the indexes in
-- step with the new status, publishes the new state and, for jobs someone listens to, writes the webhook event.
-- KEYS: 1 job, 2 queued:m, 3 pending:m:t, 4 dispatched:m, 5 running, 6 expiring, 7 active:t, 8 finished:m,
--       9 job-events, 10 webhook-endpoint:t, 11 dispatching:m (journal)
-- args: allowed (statuses), guards and patch (lists of [field, value]: cjson cannot tell {} from []),
--       ttl (seconds a record is kept once it ended), channel (pub/sub), now
-- Returns {1, record} when applied, {-1, record} when a status or guard check fails, {0, ''} if missing.
local raw = redis.call('GET', KEYS[1])
if not raw then return {0, ''} end
local job = cjson.decode(raw)
local was_status, was_progress, was_preview_step = job.status, job.progress, job.preview_step
local allowed = false
for _, s in ipairs(args.allowed) do
  if s == job.status then allowed = true end
end
if not allowed then return {-1, raw} end
for _, pair in ipairs(args.guards) do
  if job[pair[1]] ~= pair[2] then return {-1, raw} end
end
for _, pair in ipairs(args.patch) do job[pair[1]] = pair[2] end
-- Every stored state gets the next version, so readers can tell an older message from a newer one.
job.version = (type(job.version) == 'number' and job.version or 0) + 1
local out = cjson.encode(job)
redis.call('SET', KEYS[1], out, 'KEEPTTL')
local id = job.id

if job.status == 'queued' then
  if was_status ~= 'queued' then
    -- Put back (its worker died): straight into the worker queue again, ahead of everything dispatched after it,
    -- and in the dispatch journal until the caller confirms its message is sent (else the dispatcher sends it):
    -- nothing between this change and the message can strand the job.
    redis.call('ZADD', KEYS[2], num(job.created_at), id)
    redis.call('ZADD', KEYS[4], 0, id)
    redis.call('HSET', KEYS[11], id, num(args.now))
  end
else
  -- Started or ended: no longer queued, waiting for dispatch, being dispatched or in the worker queue.
  redis.call('ZREM', KEYS[2], id)
  redis.call('ZREM', KEYS[3], id)
  redis.call('ZREM', KEYS[4], id)
  redis.call('HDEL', KEYS[11], id)
end
-- Running jobs are watched for dead workers; completed outputs are swept when they expire.
if job.status == 'in_progress' then
  redis.call('ZADD', KEYS[5], type(job.started_at) == 'number' and num(job.started_at) or 0, id)
else
  redis.call('ZREM', KEYS[5], id)
end
if job.status == 'completed' or job.status == 'failed' or job.status == 'canceled' then
  redis.call('EXPIRE', KEYS[1], args.ttl)
  if job.status == 'completed' and type(job.expires_at) == 'number' then
    redis.call('ZADD', KEYS[6], num(job.expires_at), id)
  end
  redis.call('SREM', KEYS[7], id)
  if job.status ~= was_status then redis.call('HINCRBY', KEYS[8], job.status, 1) end
end
redis.call('PUBLISH', args.channel, out)

-- Webhook events: written here, in the one place state changes, so that none is lost or doubled; only for jobs
-- with a webhook_url or whose tenant has a default endpoint; progress and previews only where the job (or, for a
-- job naming no events, the tenant's endpoint) asked for them.
local function asked(name)
  -- The job's own events; for a job naming none and no webhook_url of its own, the tenant's endpoint's.
  local wanted = job.webhook_events
  if type(wanted) ~= 'table' and type(job.webhook_url) ~= 'string' then
    local endpoint = redis.call('GET', KEYS[10])
    if endpoint then wanted = cjson.decode(endpoint).events end
  end
  if type(wanted) == 'table' then
    for _, n in ipairs(wanted) do
      if n == name then return true end
    end
  end
  return false
end
local event = nil
if job.status ~= was_status then
  event = ({in_progress = 'video.started', completed = 'video.completed', failed = 'video.failed',
            canceled = 'video.canceled'})[job.status]
elseif job.status == 'in_progress' and job.progress ~= was_progress and asked('video.progress') then
  event = 'video.progress'
elseif job.status == 'in_progress' and job.preview_step ~= was_preview_step and asked('video.preview') then
  -- A new preview: only where it was asked for, so that endpoints that did not ask are not flooded.
  event = 'video.preview'
end
if event and (type(job.webhook_url) == 'string' or redis.call('EXISTS', KEYS[10]) == 1) then
  -- Bounded in case no delivery process runs; it deletes what it has handled.
  redis.call('XADD', KEYS[9], 'MAXLEN', '~', 100000, '*', 'job', id, 'type', event, 'record', out)
end
return {1, out}
