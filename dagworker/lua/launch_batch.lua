-- Persist one batch of a node's tasks (their decided inputs) and record it in the outbox,
-- exactly once: the batch applies only when the node's task cursor equals its first index, so a
-- second launcher (a reconciler resuming a launch, a redelivered completion) cannot create a
-- task twice. Tasks are persisted before their messages are sent; the outbox entry is removed
-- once they are sent, and the reconciler republishes entries that stay too long.
--
-- The last batch of a launch also closes the launch (what finish_launch.lua does otherwise), in
-- the same step: the node is marked launched and leaves the launching set. That is safe before
-- its messages are sent because every task of the node is then persisted and the batch is in
-- the outbox: a crash before the publish is repaired from the outbox, not by a relaunch.
--
-- The same queued-task record is written by finish_task.lua (handoff) and by
-- Orchestrator._direct_roots (a run's roots); test_handoff.py holds the three to the same fields.
--
-- When the broker is this Redis, the batch's messages are pushed here instead (ARGV[6] = 1):
-- the tasks and their messages then exist together or not at all, and there is no outbox
-- entry to write, remove or repair.
--
-- KEYS[1]  node hash     KEYS[2] outbox zset     KEYS[3] run hash    KEYS[4] launching zset
-- KEYS[5]  run "settle" set   KEYS[6] the broker queue list (when ARGV[6] is 1)
-- KEYS[7..] the task hashes of the batch, in index order
-- ARGV[1]  first index   ARGV[2] now   ARGV[3] outbox member   ARGV[4] slug
-- ARGV[5]  1 when this is the launch's last batch, else 0
-- ARGV[6]  1 to push the messages, 0 to record the batch in the outbox
-- ARGV[7..] per task: spec JSON (same order as KEYS[7..]); then, when pushing, per task its
--          message envelope (same order)
-- returns  {applied, cursor, ready}: applied 1 when persisted, 0 when this batch already was
--          (cursor is then the node's cursor, for the caller to resume from); ready 1 when a
--          closing batch found every task done (the node is in the settle set)
local node = redis.call('HMGET', KEYS[1], 'tasks', 'done')
local cursor = tonumber(node[1] or '0')
local first = tonumber(ARGV[1])
if cursor ~= first then
  return {0, cursor, 0}
end
local n = #KEYS - 6
for i = 1, n do
  redis.call('HSET', KEYS[6 + i], 'state', 'queued', 'attempt', 1, 'spec', ARGV[6 + i],
             'queued_at', ARGV[2])
end
redis.call('HINCRBY', KEYS[3], 'tasks_total', n)
if ARGV[6] == '1' then
  -- In chunks: Lua's unpack refuses some thousands of values, and a script that errors
  -- keeps what it wrote (DAGWORKER_LAUNCH_BATCH has no upper bound).
  for i = 7 + n, 6 + 2 * n, 1000 do
    redis.call('LPUSH', KEYS[6], unpack(ARGV, i, math.min(i + 999, 6 + 2 * n)))
  end
else
  redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
end
local ready = 0
if ARGV[5] == '1' then
  redis.call('HSET', KEYS[1], 'tasks', first + n, 'launch_at', ARGV[2], 'launched', 1)
  redis.call('ZREM', KEYS[4], ARGV[4])
  -- done is not moved by this script: the value read above is current
  if tonumber(node[2] or '0') >= first + n then
    redis.call('SADD', KEYS[5], ARGV[4])
    ready = 1
  end
else
  redis.call('HSET', KEYS[1], 'tasks', first + n, 'launch_at', ARGV[2])
  -- The launch is alive: the reconciler resumes only launches that stopped moving.
  redis.call('ZADD', KEYS[4], 'XX', ARGV[2], ARGV[4])
end
return {1, first + n, ready}
