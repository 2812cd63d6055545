-- Record the outcome of one task attempt, once. The first delivery to finish wins; a duplicate
-- (the same attempt delivered twice, or redelivered after a crash) changes nothing, so no
-- artifact is published twice and no counter moves twice. The last task of a launched node puts
-- the node in the "settle" set for the orchestrator.
--
-- KEYS[1] run hash   KEYS[2] node hash   KEYS[3] task hash   KEYS[4] outputs list
-- KEYS[5] counts hash   KEYS[6] staging list (may not exist)   KEYS[7] settle set
-- KEYS[8] task history list (one JSON entry per finished attempt, when there were retries)
-- KEYS[9] the node's notable-tasks zset (failed or retried tasks, for status)
-- ARGV[1] attempt   ARGV[2] outcome: completed | failed | cancelled   ARGV[3] now
-- ARGV[4] task index   ARGV[5] slug   ARGV[6] number of outputs   ARGV[7] error ('' if none)
-- ARGV[8] traceback   ARGV[9] 1 when outputs are staged in KEYS[6]; else ARGV[10..] are them
-- returns {verdict, settle}; verdict: recorded | duplicate | stale
-- (Fields are read and written with one HMGET / HSET per hash: every redis.call costs.)
local task = redis.call('HMGET', KEYS[3], 'state', 'attempt', 'started_at', 'worker')
local state = task[1]
local attempt = tonumber(task[2] or '0')
if state == 'completed' or state == 'failed' or state == 'cancelled' or state == 'compensated'
    or tonumber(ARGV[1]) ~= attempt then
  redis.call('DEL', KEYS[6])
  if state == 'completed' or state == 'failed' or state == 'cancelled' then
    return {'duplicate', 0}
  end
  return {'stale', 0}
end
local outcome = ARGV[2]
local n_out = tonumber(ARGV[6])
if outcome == 'completed' then
  redis.call('DEL', KEYS[4])
  if ARGV[9] == '1' then
    if n_out > 0 then redis.call('RENAME', KEYS[6], KEYS[4]) end
  elseif n_out > 0 then
    redis.call('RPUSH', KEYS[4], unpack(ARGV, 10, 9 + n_out))
  end
  redis.call('HSET', KEYS[5], ARGV[4], n_out)
else
  redis.call('DEL', KEYS[6])
  n_out = 0
end
local fields = {'state', outcome, 'finished_at', ARGV[3], 'outputs', n_out}
if ARGV[7] ~= '' then
  fields[7], fields[8], fields[9], fields[10] = 'error', ARGV[7], 'traceback', ARGV[8]
end
redis.call('HSET', KEYS[3], unpack(fields))
-- The task hash describes the last attempt; earlier attempts (retries) are in the history
-- list, which this completes. A task that succeeded first time needs no list: one key less
-- per task in a 100,000-task fan-out.
if attempt > 1 then
  redis.call('RPUSH', KEYS[8], cjson.encode({
    attempt = attempt, state = outcome, error = ARGV[7], outputs = n_out,
    started_at = tonumber(task[3]), finished_at = tonumber(ARGV[3]), worker = task[4],
  }))
end
if outcome == 'failed' or attempt > 1 then
  redis.call('ZADD', KEYS[9], 'NX', ARGV[3], ARGV[4])
end
-- The node's counters: read once, written once (this script is atomic, like HINCRBY).
local node = redis.call('HMGET', KEYS[2], 'launched', 'tasks', 'done', outcome)
local done = tonumber(node[3] or '0') + 1
redis.call('HSET', KEYS[2], 'done', done, outcome, tonumber(node[4] or '0') + 1)
redis.call('HINCRBY', KEYS[1], 'tasks_done', 1)
local settle = 0
if node[1] == '1' and done >= tonumber(node[2]) then
  redis.call('SADD', KEYS[7], ARGV[5])
  settle = 1
end
return {'recorded', settle}
