-- Turn a failed attempt (of a task, or of its compensation) into a scheduled retry, once: only
-- the delivery that owns the current attempt (state running, same attempt number) may do it, so
-- a duplicate delivery of a failing attempt cannot schedule two retries. The next attempt waits
-- in the fleet-wide due set, not as a long ETA message in the broker (which Redis would
-- redeliver after the visibility timeout). A run that stopped (failed, cancelled) gets no
-- retry: the attempt is recorded as failed instead, so a rollback is not held up by a backoff.
--
-- KEYS[1] task hash   KEYS[2] task history list   KEYS[3] due zset   KEYS[4] run hash
-- KEYS[5] the node's notable-tasks zset (retried tasks are listed in status)
-- ARGV[1] attempt     ARGV[2] now   ARGV[3] due time   ARGV[4] due member (kind|run|slug|index|n+1)
-- ARGV[5] error       ARGV[6] traceback
-- ARGV[7] field prefix: '' for the task itself, 'rb_' for its compensation
-- ARGV[8] the run status that allows a retry (running also allows paused)   ARGV[9] task index
-- returns 1 when the retry was scheduled, 0 when this delivery no longer owns the attempt
local p = ARGV[7]
local state = redis.call('HGET', KEYS[1], p .. 'state')
local attempt = tonumber(redis.call('HGET', KEYS[1], p .. 'attempt') or '0')
if state ~= 'running' or attempt ~= tonumber(ARGV[1]) then
  return 0
end
local status = redis.call('HGET', KEYS[4], 'status')
if status ~= ARGV[8] and not (ARGV[8] == 'running' and status == 'paused') then
  return 0
end
redis.call('RPUSH', KEYS[2], cjson.encode({
  kind = p == 'rb_' and 'compensation' or 'task',
  attempt = attempt, state = 'failed', error = ARGV[5], traceback = ARGV[6],
  started_at = tonumber(redis.call('HGET', KEYS[1], p .. 'started_at')),
  finished_at = tonumber(ARGV[2]), worker = redis.call('HGET', KEYS[1], p .. 'worker'),
}))
redis.call('HSET', KEYS[1], p .. 'state', 'retrying', p .. 'attempt', attempt + 1,
           p .. 'error', ARGV[5], p .. 'traceback', ARGV[6], p .. 'retry_at', ARGV[3])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[4])
redis.call('ZADD', KEYS[5], 'NX', ARGV[2], ARGV[9])
return 1
