"""Lua scripts that make each job write atomic. Keys are documented in `orchestrator.store.keys`.

Every state change of a job is one script call: it checks the version read by the caller
(compare-and-set) and, for a worker, its fencing token, then writes the record, moves the
job between index sets, updates the dispatch timer and appends the event, all at once.
"""

from __future__ import annotations

NONE_KEY = "vmorch:none"  # stands in for a key a call does not use

CREATE_JOB = (
    """
-- KEYS: job idem all state_queued kind vmjobs vmq queued events due vm vmname vms broker_queue
--       vmq2 (the queue of a second VM the job holds: a clone's source; else NONE_KEY)
--       queuectl (queue controls: a draining queue refuses the job)
-- Stream entries carry the envelope (e) and, to be filtered without decoding, type and subject
-- ARGV: id doc created_us idem_value idem_ttl has_vm event due_ms vm_doc vm_name vm_id
--       message (the Celery message, pushed when the job may start at once: first in
--       each of its VM queues) queue ('' when the job is exempt from a drain)
if ARGV[4] ~= '' then
  local cur = redis.call('GET', KEYS[2])
  if cur then
    local sp = string.find(cur, ' ', 1, true)
    local jid = string.sub(cur, 1, sp - 1)
    local mine = string.sub(ARGV[4], string.find(ARGV[4], ' ', 1, true) + 1)
    if string.sub(cur, sp + 1) == mine then return {'exists', jid, -1} end
    return {'mismatch', jid, -1}
  end
end
if ARGV[13] ~= '' then
  local ctl = redis.call('HGET', KEYS[16], ARGV[13])
  if ctl and cjson.decode(ctl)['mode'] == 'drain' then return {'draining', '', -1} end
end
if ARGV[9] ~= '' then
  local taken = redis.call('GET', KEYS[12])
  if taken then return {'name_taken', taken, -1} end
  redis.call('SET', KEYS[11], ARGV[9])
  redis.call('SET', KEYS[12], ARGV[11])
  redis.call('ZADD', KEYS[13], ARGV[3], ARGV[11])
end
redis.call('HSET', KEYS[1], 'doc', ARGV[2], 'state', 'queued', 'version', 1)
if ARGV[4] ~= '' then redis.call('SET', KEYS[2], ARGV[4], 'EX', ARGV[5]) end
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
redis.call('ZADD', KEYS[4], ARGV[3], ARGV[1])
redis.call('ZADD', KEYS[5], ARGV[3], ARGV[1])
redis.call('ZADD', KEYS[8], ARGV[3], ARGV[1])
local pos = 0
if ARGV[6] == '1' then
  redis.call('ZADD', KEYS[6], ARGV[3], ARGV[1])
  pos = redis.call('RPUSH', KEYS[7], ARGV[1]) - 1
end
if KEYS[15] ~= '"""
    + NONE_KEY
    + """' then
  pos = math.max(pos, redis.call('RPUSH', KEYS[15], ARGV[1]) - 1)
end
if pos == 0 then
  redis.call('ZADD', KEYS[10], ARGV[8], ARGV[1])
  if ARGV[12] ~= '' then redis.call('LPUSH', KEYS[14], ARGV[12]) end
end
redis.call('XADD', KEYS[9], '*', 'e', ARGV[7], 't', 'job.queued', 's', ARGV[1])
return {'created', ARGV[1], pos}
"""
)

COMMIT_JOB = (
    """
-- KEYS: job lease events state_old state_new queued vmq due ended vmq2
-- ARGV: version fence doc state event id created_us terminal due now_ms event_type
--       child_event parent_id (a child job's end, an event about its parent job)
--       heads_due_ms (when the VM's next job is due: '' for now)
local h = redis.call('HMGET', KEYS[1], 'version', 'state')
if not h[1] then return {'missing', ''} end
if h[1] ~= ARGV[1] then return {'conflict', ''} end
if ARGV[2] ~= '' and redis.call('GET', KEYS[2]) ~= ARGV[2] then return {'fenced', ''} end
redis.call('HSET', KEYS[1], 'doc', ARGV[3], 'state', ARGV[4], 'version', tonumber(h[1]) + 1)
if h[2] ~= ARGV[4] then
  redis.call('ZREM', KEYS[4], ARGV[6])
  redis.call('ZADD', KEYS[5], ARGV[7], ARGV[6])
  if h[2] == 'queued' then redis.call('ZREM', KEYS[6], ARGV[6]) end
end
if ARGV[5] ~= '' then
  redis.call('XADD', KEYS[3], '*', 'e', ARGV[5], 't', ARGV[11], 's', ARGV[6])
end
if ARGV[12] ~= '' then
  redis.call('XADD', KEYS[3], '*', 'e', ARGV[12], 't', 'job.child_ended', 's', ARGV[13])
end
local heads = {}
if ARGV[8] == '1' then
  redis.call('ZREM', KEYS[8], ARGV[6])
  redis.call('ZADD', KEYS[9], ARGV[10], ARGV[6])
  for _, q in ipairs({KEYS[7], KEYS[10]}) do
    if q ~= '"""
    + NONE_KEY
    + """' then
      -- hand the VM to the next job only if this job held it (was the head)
      local was_head = redis.call('LINDEX', q, 0) == ARGV[6]
      redis.call('LREM', q, 0, ARGV[6])
      if was_head then
        local head = redis.call('LINDEX', q, 0)
        if head then
          redis.call('ZADD', KEYS[8], ARGV[14] ~= '' and ARGV[14] or ARGV[10], head)
          table.insert(heads, head)
        end
      end
    end
  end
elseif ARGV[9] == '-' then
  redis.call('ZREM', KEYS[8], ARGV[6])
elseif ARGV[9] ~= '' then
  redis.call('ZADD', KEYS[8], ARGV[9], ARGV[6])
end
return {'ok', heads}
"""
)

ACQUIRE_AND_READ = """
-- KEYS: lease fence job queuectl   ARGV: lease_ms
-- Take the lease and read the job in one round trip: {token, doc, version, controlled} or
-- false; `controlled`, for a queued job only: the queues paused or rate-limited now (the
-- runner asks ADMIT_START only for a job of one of them: no round trip for the others).
-- A job that is gone (deleted by retention; a stale message) gets {0, '', ''}, and no
-- lease or fence key is made for it: nothing would ever delete them.
if redis.call('EXISTS', KEYS[3]) == 0 then return {0, '', ''} end
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
local t = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], t, 'PX', ARGV[1])
local h = redis.call('HMGET', KEYS[3], 'doc', 'version', 'state')
local controlled = {}
if h[3] == 'queued' then
  local all = redis.call('HGETALL', KEYS[4])
  for i = 1, #all, 2 do
    local ctl = cjson.decode(all[i + 1])
    local limit = ctl['rate_limit_per_minute']
    if ctl['mode'] == 'pause' or (limit ~= nil and limit ~= cjson.null) then
      table.insert(controlled, all[i])
    end
  end
end
return {t, h[1] or '', h[2] or '', controlled}
"""

PURGE_STRIDE = 10  # keys PURGE_JOBS takes per job
PURGE_JOBS = """
-- KEYS: all ended due, then the ARGV[1] jobs:state:* zsets, then PURGE_STRIDE keys per
--       job: job kind vmjobs queued fence lease wait waits_on waits_on(doc's wait) expect
-- ARGV: number of state zsets, stride, then one job id per job
-- Deletes each finished job (one still in `ended`: another router may have been first)
-- with every entry that names it. Returns how many jobs were deleted.
local nstates, stride = tonumber(ARGV[1]), tonumber(ARGV[2])
local shared = 3 + nstates
local deleted = 0
for i = 3, #ARGV do
  local id = ARGV[i]
  local k = shared + (i - 3) * stride
  if redis.call('ZSCORE', KEYS[2], id) then
    redis.call('DEL', KEYS[k + 1], KEYS[k + 5], KEYS[k + 6], KEYS[k + 7])
    for z = 1, shared do redis.call('ZREM', KEYS[z], id) end
    for z = k + 2, k + 4 do redis.call('ZREM', KEYS[z], id) end
    redis.call('SREM', KEYS[k + 8], id)
    redis.call('SREM', KEYS[k + 9], id)
    -- the job's expectations: fields '<job id>|<types>'
    for _, f in ipairs(redis.call('HKEYS', KEYS[k + 10])) do
      if string.sub(f, 1, #id + 1) == id .. '|' then redis.call('HDEL', KEYS[k + 10], f) end
    end
    deleted = deleted + 1
  end
end
return deleted
"""

FORGET_CONSUMER = """
-- KEYS: events   ARGV: group consumer
-- Remove a consumer from the group only if it owns no pending entry (they would be lost).
if #redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2]) > 0 then return 0 end
redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
return 1
"""

RELEASE_AND_PUSH = """
-- KEYS: lease, then the queues to push to   ARGV: token, then one message per queue
-- Release the lease, then publish what the worker has to hand on, in one round trip.
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
for i = 2, #KEYS do redis.call('LPUSH', KEYS[i], ARGV[i]) end
return 1
"""

RENEW_LEASE = """
-- KEYS: lease   ARGV: token lease_ms
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

RELEASE_LEASE = """
-- KEYS: lease   ARGV: token
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

CLAIM_DUE = """
-- KEYS: due   ARGV: now_ms next_ms limit
-- Returns due job ids and pushes their timer forward, so two routers do not both take one.
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
for _, id in ipairs(ids) do redis.call('ZADD', KEYS[1], ARGV[2], id) end
return ids
"""

SET_VM_STATE = """
-- KEYS: vm vmstate   ARGV: reporting server ('' for a workflow), then field value ...
-- Only for a VM that still has a record, and, from a server's agent, only for a VM placed
-- on that server: the old server of a relocated VM must not report it gone.
local doc = redis.call('GET', KEYS[1])
if not doc then return 0 end
if ARGV[1] ~= '' then
  local placed = cjson.decode(doc)['server']
  if placed ~= nil and placed ~= cjson.null and placed ~= ARGV[1] then return 0 end
end
redis.call('HSET', KEYS[2], unpack(ARGV, 2))
return 1
"""

# Records the matching event in the wait, once (the first match wins).
CLAIM_WAIT = """
-- KEYS: wait waits_on   ARGV: job_id event_json
local raw = redis.call('GET', KEYS[1])
if not raw then return 0 end
local w = cjson.decode(raw)
if w['matched'] ~= nil and w['matched'] ~= cjson.null then return 0 end
w['matched'] = cjson.decode(ARGV[2])
redis.call('SET', KEYS[1], cjson.encode(w))
redis.call('SREM', KEYS[2], ARGV[1])
return 1
"""

RENEW_FIRING = """
-- KEYS: hookfired   ARGV: lease_ms
-- A firing in progress stays this router's while it acts (a long webhook delivery).
if redis.call('GET', KEYS[1]) == 'busy' then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  return 1
end
return 0
"""

RELEASE_FIRING = """
-- KEYS: hookfired
if redis.call('GET', KEYS[1]) == 'busy' then redis.call('DEL', KEYS[1]) end
return 1
"""

CONSUME_EXPECTATION = """
-- KEYS: expect   ARGV: item
-- An expectation is used up by one event: whoever deletes it first attributes that event.
return redis.call('HDEL', KEYS[1], ARGV[1])
"""

PUBLISH_UNEXPECTED = """
-- KEYS: events, then one expectations key per event (NONE_KEY: cannot be expected)
-- ARGV: then three per event: envelope, type, subject
-- Appends the events in order up to the first whose VM has an expectation recorded; returns
-- how many it appended (the caller attributes the rest, then appends them).
for i = 2, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then return i - 2 end
  local a = (i - 2) * 3
  redis.call('XADD', KEYS[1], '*', 'e', ARGV[a + 1], 't', ARGV[a + 2], 's', ARGV[a + 3])
end
return #KEYS - 1
"""

LEAVE_QUEUE = """
-- KEYS: vmq due   ARGV: job now_ms
-- A job leaves a VM queue before it ends (a clone, its source's once the copy is done);
-- when it was the head, the next job there is due now. Returns that job, or ''.
local was_head = redis.call('LINDEX', KEYS[1], 0) == ARGV[1]
redis.call('LREM', KEYS[1], 0, ARGV[1])
if not was_head then return '' end
local head = redis.call('LINDEX', KEYS[1], 0)
if not head then return '' end
redis.call('ZADD', KEYS[2], ARGV[2], head)
return head
"""

ADMIT_START = """
-- KEYS: queuectl held starts due   ARGV: queue job_id now_ms
-- Whether a queued job may start now under its queue's control: {'go'}; {'held'} (a
-- paused queue: kept in `held` until it resumes, off the dispatch timer); {'later', ms}
-- (the rate limit's window is full: the timer brings it back then). A start is counted
-- under the job's id, so a job admitted twice (a message seen again) counts once.
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return {'go'} end
local ctl = cjson.decode(raw)
if ctl['mode'] == 'pause' then
  redis.call('SADD', KEYS[2], ARGV[2])
  redis.call('ZREM', KEYS[4], ARGV[2])
  return {'held'}
end
local limit = ctl['rate_limit_per_minute']
if limit == nil or limit == cjson.null then return {'go'} end
local now = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - 60000)
if redis.call('ZSCORE', KEYS[3], ARGV[2]) then return {'go'} end
if redis.call('ZCARD', KEYS[3]) >= tonumber(limit) then
  local oldest = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
  local at = tonumber(oldest[2]) + 60000
  redis.call('ZADD', KEYS[4], at, ARGV[2])
  return {'later', tostring(at)}
end
redis.call('ZADD', KEYS[3], now, ARGV[2])
redis.call('PEXPIRE', KEYS[3], 61000)
return {'go'}
"""

SET_QUEUE_CONTROL = """
-- KEYS: queuectl held events due   ARGV: queue doc mode event now_ms
-- Set a queue's control and publish its event; unless it pauses, hand back the jobs the
-- pause held, in the same step: the caller dispatches them, and their dispatch timers are
-- due now, so a router does should the caller die first. None is held and forgotten.
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('XADD', KEYS[3], '*', 'e', ARGV[4], 't', 'queue.control_changed', 's', ARGV[1])
if ARGV[3] == 'pause' then return {} end
local held = redis.call('SMEMBERS', KEYS[2])
for _, id in ipairs(held) do redis.call('ZADD', KEYS[4], ARGV[5], id) end
redis.call('DEL', KEYS[2])
return held
"""
