-- Mark a node's launch complete. A node settles when its launch is complete and every task is
-- done; whichever of this script and the last task's completion runs second sees both and asks
-- for settlement, so it is asked for exactly once even when they race.
--
-- The node leaves the launching set in the same step (nothing is left for the reconciler to
-- resume once this has run; before, it resumes the launch, which ends here again).
--
-- KEYS[1] node hash   KEYS[2] run "settle" set (slugs waiting for the orchestrator)
-- KEYS[3] launching zset
-- ARGV[1] slug        ARGV[2] the task count the launcher persisted
-- returns 1 when the node is now ready to settle, 0 otherwise
if tonumber(redis.call('HGET', KEYS[1], 'tasks') or '0') ~= tonumber(ARGV[2]) then
  return redis.error_reply('finish_launch.lua: task count mismatch for ' .. ARGV[1])
end
redis.call('ZREM', KEYS[3], ARGV[1])
if redis.call('HGET', KEYS[1], 'launched') == '1' then
  return 0
end
redis.call('HSET', KEYS[1], 'launched', 1)
if tonumber(redis.call('HGET', KEYS[1], 'done') or '0') >= tonumber(ARGV[2]) then
  redis.call('SADD', KEYS[2], ARGV[1])
  return 1
end
return 0
