-- Turn a failed attempt into a scheduled retry, once: only the delivery that owns the current
-- attempt (state running, same attempt number) may do it, so a duplicate delivery of a failing
-- attempt cannot schedule two retries. The next attempt waits in the fleet-wide due set, not as
-- a long ETA message in the broker (which Redis would redeliver after the visibility timeout).
--
-- KEYS[1] task hash   KEYS[2] task history list   KEYS[3] due zset
-- ARGV[1] attempt     ARGV[2] now   ARGV[3] due time   ARGV[4] due member (run|slug|index|n+1)
-- ARGV[5] error       ARGV[6] traceback
-- returns 1 when the retry was scheduled, 0 when this delivery no longer owns the attempt
local state = redis.call('HGET', KEYS[1], 'state')
local attempt = tonumber(redis.call('HGET', KEYS[1], 'attempt') or '0')
if state ~= 'running' or attempt ~= tonumber(ARGV[1]) then
  return 0
end
redis.call('RPUSH', KEYS[2], cjson.encode({
  attempt = attempt, state = 'failed', error = ARGV[5], traceback = ARGV[6],
  started_at = tonumber(redis.call('HGET', KEYS[1], 'started_at')),
  finished_at = tonumber(ARGV[2]), worker = redis.call('HGET', KEYS[1], 'worker'),
}))
redis.call('HSET', KEYS[1], 'state', 'retrying', 'attempt', attempt + 1, 'error', ARGV[5],
           'traceback', ARGV[6], 'retry_at', ARGV[3])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[4])
return 1
