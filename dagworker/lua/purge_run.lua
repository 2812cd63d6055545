-- Begin deleting a finished run whose retention elapsed (dagworker/store/retention.py): in one
-- atomic step, the run leaves the run list and the retention queue and its run hash is
-- deleted, so from here on the run does not exist for any reader (status, retry, replay, a
-- late message's begin_task); its other keys are deleted after this, by the caller, and the
-- run stays in the purging set until they are, so an interrupted deletion is resumed.
-- A run that is not finished (retried or rolled back on request since it ended) leaves the
-- retention queue (it comes back when it ends again); a run that ended again since it was
-- queued is kept, at its new finish time.
--
-- KEYS[1] run hash   KEYS[2] runs:ended   KEYS[3] runs:all   KEYS[4] runs:purging
-- ARGV[1] run id   ARGV[2] cutoff: runs finished at or before it are deleted   ARGV[3] now
-- ARGV[4..] the finished run states (states.RUN_TERMINAL)
-- returns 1 (deleting: the caller deletes the rest), 0 (kept)
local run = redis.call('HMGET', KEYS[1], 'status', 'finished_at')
local status = run[1]
if status then
  local finished = false
  for i = 4, #ARGV do
    if status == ARGV[i] then finished = true end
  end
  if not finished then
    redis.call('ZREM', KEYS[2], ARGV[1])
    return 0
  end
  local at = tonumber(run[2] or '')
  if at and at > tonumber(ARGV[2]) then
    redis.call('ZADD', KEYS[2], at, ARGV[1])
    return 0
  end
end
-- (a run hash already gone: an earlier deletion, or by hand; its other keys are deleted too)
redis.call('ZADD', KEYS[4], ARGV[3], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('DEL', KEYS[1])
return 1
