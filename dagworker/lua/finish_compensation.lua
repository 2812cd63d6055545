-- Record the outcome of one compensation attempt, once (fenced by rb_state and rb_attempt, so a
-- duplicate delivery changes nothing). The last compensation of a launched node puts the node
-- in the compensation settle set for the orchestrator.
--
-- KEYS[1] node hash   KEYS[2] task hash   KEYS[3] compensation settle set   KEYS[4] history list
-- KEYS[5] the node's notable-tasks zset (a failed compensation is shown in status)
-- ARGV[7] task index
-- ARGV[1] attempt     ARGV[2] outcome: done | failed   ARGV[3] now   ARGV[4] slug
-- ARGV[5] error       ARGV[6] traceback
-- returns {verdict, settle}; verdict: recorded | duplicate
local rb = redis.call('HGET', KEYS[2], 'rb_state')
local attempt = tonumber(redis.call('HGET', KEYS[2], 'rb_attempt') or '0')
if rb ~= 'running' or attempt ~= tonumber(ARGV[1]) then
  return {'duplicate', 0}
end
redis.call('HSET', KEYS[2], 'rb_state', ARGV[2], 'rb_finished_at', ARGV[3])
redis.call('RPUSH', KEYS[4], cjson.encode({
  kind = 'compensation', attempt = attempt, state = ARGV[2], error = ARGV[5],
  started_at = tonumber(redis.call('HGET', KEYS[2], 'rb_started_at')),
  finished_at = tonumber(ARGV[3]), worker = redis.call('HGET', KEYS[2], 'rb_worker'),
}))
if ARGV[2] == 'done' then
  redis.call('HSET', KEYS[2], 'state', 'compensated')
  redis.call('HINCRBY', KEYS[1], 'compensated', 1)
else
  redis.call('HSET', KEYS[2], 'rb_error', ARGV[5], 'rb_traceback', ARGV[6])
  redis.call('HINCRBY', KEYS[1], 'rb_failed', 1)
  redis.call('ZADD', KEYS[5], 'NX', ARGV[3], ARGV[7])
  if not redis.call('HGET', KEYS[1], 'rb_error') then
    redis.call('HSET', KEYS[1], 'rb_error', ARGV[5])
  end
end
local done = redis.call('HINCRBY', KEYS[1], 'rb_done', 1)
if redis.call('HGET', KEYS[1], 'rb_launched') == '1'
    and done >= tonumber(redis.call('HGET', KEYS[1], 'rb_tasks') or '0') then
  redis.call('SADD', KEYS[3], ARGV[4])
  return {'recorded', 1}
end
return {'recorded', 0}
