-- Begin deleting a finished run whose retention elapsed (dagworker/store/retention.py): in one
-- atomic step, the run leaves the run list and the retention queue and its run hash is
-- deleted, so from here on the run does not exist for any reader (status, retry, replay, a
-- late message's begin_task); its other keys are deleted after this, by the caller, and the
-- run stays in the purging set until they are, so an interrupted deletion is resumed.
--
-- Kept instead (0):
-- - a run that is not finished (retried or rolled back on request since it ended): it leaves
--   the retention queue and comes back when it ends again;
-- - a child run whose parent run exists: it leaves the queue and is deleted with its parent
--   (a parent's rollback undoes its children, so they must outlive it);
-- - a run that ended again since it was queued: queued again at its new finish time;
-- - a run with tasks still in flight (cancelled, or failed fast, with tasks queued or running:
--   tasks_done < tasks_total), which a late message could write to again: queued again one
--   TTL later (ARGV[6]); it is deleted then, in flight or not (ARGV[3]), as its messages may
--   be lost for good.
--
-- KEYS[1] run hash   KEYS[2] runs:ended   KEYS[3] runs:all   KEYS[4] runs:purging
-- ARGV[1] run id   ARGV[2] cutoff: runs finished at or before it are deleted
-- ARGV[3] the cutoff for runs with tasks in flight   ARGV[4] now
-- ARGV[5] run hash key prefix (a parent's run hash is ARGV[5] .. id .. '}')
-- ARGV[6] the TTL (seconds)   ARGV[7] '1': a parent's deletion: delete the child anyway
-- ARGV[8..] the finished run states (states.RUN_TERMINAL)
-- returns 1 (deleting: the caller deletes the rest), 0 (kept)
local run = redis.call('HMGET', KEYS[1], 'status', 'finished_at', 'parent', 'tasks_done',
                       'tasks_total')
local status = run[1]
if status then
  local finished = false
  for i = 8, #ARGV do
    if status == ARGV[i] then finished = true end
  end
  if not finished then
    redis.call('ZREM', KEYS[2], ARGV[1])
    return 0
  end
  if run[3] and ARGV[7] ~= '1' then
    local parent = cjson.decode(run[3])[1]
    if redis.call('EXISTS', ARGV[5] .. parent .. '}') == 1 then
      redis.call('ZREM', KEYS[2], ARGV[1])
      return 0
    end
  end
  local at = tonumber(run[2] or '') or 0
  if at > tonumber(ARGV[2]) then
    redis.call('ZADD', KEYS[2], at, ARGV[1])
    return 0
  end
  if tonumber(run[4] or '0') < tonumber(run[5] or '0') and at > tonumber(ARGV[3]) then
    redis.call('ZADD', KEYS[2], at + tonumber(ARGV[6]), ARGV[1])
    return 0
  end
end
-- (a run hash already gone: an earlier deletion, or by hand; its other keys are deleted too)
redis.call('ZADD', KEYS[4], ARGV[4], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('DEL', KEYS[1])
return 1
