-- Persist one batch of a node's tasks (their decided inputs) and record it in the outbox,
-- exactly once: the batch applies only when the node's task cursor equals its first index, so a
-- second launcher (a reconciler resuming a launch, a redelivered completion) cannot create a
-- task twice. Tasks are persisted before their messages are sent; the outbox entry is removed
-- once they are sent, and the reconciler republishes entries that stay too long.
--
-- KEYS[1]  node hash     KEYS[2] outbox zset     KEYS[3] run hash    KEYS[4] launching zset
-- KEYS[5..] the task hashes of the batch, in index order
-- ARGV[1]  first index   ARGV[2] now   ARGV[3] outbox member   ARGV[4] slug
-- ARGV[5..] per task: spec JSON (same order as KEYS[5..])
-- returns  1 when applied, 0 when this batch was already persisted
local cursor = tonumber(redis.call('HGET', KEYS[1], 'tasks') or '0')
local first = tonumber(ARGV[1])
if cursor ~= first then
  return 0
end
local n = #KEYS - 4
for i = 1, n do
  redis.call('HSET', KEYS[4 + i], 'state', 'queued', 'attempt', 1, 'spec', ARGV[4 + i],
             'queued_at', ARGV[2])
end
-- The launch is alive: the reconciler resumes only launches that stopped moving.
redis.call('ZADD', KEYS[4], 'XX', ARGV[2], ARGV[4])
redis.call('HSET', KEYS[1], 'tasks', first + n, 'launch_at', ARGV[2])
redis.call('HINCRBY', KEYS[3], 'tasks_total', n)
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
return 1
