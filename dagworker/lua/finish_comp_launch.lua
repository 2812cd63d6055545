-- Mark a node's compensation launch complete. Like finish_launch.lua: whichever of this script
-- and the last compensation's completion runs second sees both and asks for the node to be
-- settled, so it is asked for exactly once even when they race.
--
-- The node leaves the compensation launching set in the same step.
--
-- KEYS[1] node hash   KEYS[2] compensation settle set   KEYS[3] compensation launching zset
-- ARGV[1] slug
-- returns 1 when the node's compensations are all finished, 0 otherwise
redis.call('ZREM', KEYS[3], ARGV[1])
if redis.call('HGET', KEYS[1], 'rb_launched') == '1' then
  return 0
end
redis.call('HSET', KEYS[1], 'rb_launched', 1)
local total = tonumber(redis.call('HGET', KEYS[1], 'rb_tasks') or '0')
if tonumber(redis.call('HGET', KEYS[1], 'rb_done') or '0') >= total then
  redis.call('SADD', KEYS[2], ARGV[1])
  return 1
end
return 0
