-- Record the outcome of one task attempt, once. The first delivery to finish wins; a duplicate
-- (the same attempt delivered twice, or redelivered after a crash) changes nothing, so no
-- artifact is published twice and no counter moves twice. The last task of a launched node puts
-- the node in the "settle" set for the orchestrator.
--
-- Handoff (dagworker/handoff.py): the completion of a node's only task may also settle the
-- node and launch its successors here, in the same atomic step, instead of the orchestrator's
-- lock, read, decide, commit, launch and publish round trips. The worker sends what it would
-- launch, planned from the outputs it is recording (the successors whose only dependency is
-- this node, and joins whose other dependencies it read completed, with their outputs); this
-- script applies it only when the orchestrator would decide exactly that: the run is running
-- at the epoch the plan was made for, no orchestrator refused by a handoff is deciding it
-- (commit.lua's "deciding" mark), the node is running,
-- each planned successor is pending and waits for this node alone, each other successor still
-- waits for another node, and, when the node is the run's last, no node of the run failed (the
-- run completes here). Anything else falls back to the settle set. The handoff bumps the run's
-- version like a commit, so an orchestrator (or a control action) that read the run before it
-- cannot commit over it: its commit is refused and it reads again. It does not wait for the
-- run lock: that lock keeps orchestrators from deciding at the same time, and the version
-- fence is what keeps a decision made on an old read from being written.
--
-- KEYS[1] run hash   KEYS[2] node hash   KEYS[3] task hash   KEYS[4] outputs list
-- KEYS[5] counts hash   KEYS[6] staging list (may not exist)   KEYS[7] settle set
-- KEYS[8] task history list (one JSON entry per finished attempt, when there were retries)
-- KEYS[9] the node's notable-tasks zset (failed or retried tasks, for status)
-- KEYS[10] node-states hash   KEYS[11..] keys the handoff names by position
-- ARGV[1] attempt   ARGV[2] outcome: completed | failed | cancelled   ARGV[3] now
-- ARGV[4] task index   ARGV[5] slug   ARGV[6] number of outputs   ARGV[7] error ('' if none)
-- ARGV[8] traceback   ARGV[9] 1 when outputs are staged in KEYS[6]; else ARGV[11..] are them
-- ARGV[10] the handoff, JSON ('' for none): {epoch, claim: [[slug, node key, [[task key,
--          spec], ...]], ...], wait: [slug, ...], push: [[queue key, [envelope, ...]], ...],
--          end (a node with no successors): {run, event (its JSON), hooks (a hook listens),
--          active, ended, events, due (key positions)}}
-- returns {verdict, settle}; verdict: recorded | duplicate | stale; settle: 0; 1 (the node is
--         in the settle set); 2 (the node settled here and its successors were launched);
--         3 (it was the run's last node and the run completed here), 4 (as 3, and the run's
--         hooks were scheduled)
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
  -- Only a completed attempt writes outputs, and it is the last: a first attempt has none
  -- to replace.
  if attempt > 1 then redis.call('DEL', KEYS[4]) end
  if ARGV[9] == '1' then
    -- (a staging list expires if its worker dies; its outputs are kept as long as the run)
    if n_out > 0 then
      redis.call('RENAME', KEYS[6], KEYS[4])
      redis.call('PERSIST', KEYS[4])
    end
  elseif n_out > 0 then
    redis.call('RPUSH', KEYS[4], unpack(ARGV, 11, 10 + n_out))
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
local node = redis.call('HMGET', KEYS[2], 'launched', 'tasks', 'done', outcome, 'failed',
                        'cancelled', 'launch_failed')
local done = tonumber(node[3] or '0') + 1
local counters = {'done', done, outcome, tonumber(node[4] or '0') + 1}
if node[1] ~= '1' or done < tonumber(node[2]) then
  redis.call('HSET', KEYS[2], unpack(counters))
  redis.call('HINCRBY', KEYS[1], 'tasks_done', 1)
  return {'recorded', 0}
end

-- The node's last task. Hand its successors off here when the plan still holds; the checks
-- that fail most often (a successor becoming ready, the run ending) come first.
local function handoff()
  -- (decide() fails a node with a failed or cancelled task or a failed launch: none here)
  if ARGV[10] == '' or outcome ~= 'completed' or tonumber(node[2]) ~= 1
      or tonumber(node[5] or '0') > 0 or tonumber(node[6] or '0') > 0
      or tonumber(node[7] or '0') > 0 then
    return false
  end
  local plan = cjson.decode(ARGV[10])
  local wanted = {ARGV[5]}
  for _, c in ipairs(plan.claim) do
    wanted[#wanted + 1] = c[1]
    wanted[#wanted + 1] = c[1] .. ':wait'
  end
  for _, w in ipairs(plan.wait) do
    wanted[#wanted + 1] = w .. ':wait'
  end
  local states = redis.call('HMGET', KEYS[10], unpack(wanted))
  if states[1] ~= 'running' then return false end
  local writes = {ARGV[5], 'completed'}
  local i = 2
  for _, c in ipairs(plan.claim) do
    if states[i] ~= 'pending' or states[i + 1] ~= '1' then return false end
    i = i + 2
    writes[#writes + 1] = c[1]; writes[#writes + 1] = 'running'
    writes[#writes + 1] = c[1] .. ':wait'; writes[#writes + 1] = 0
  end
  for _, w in ipairs(plan.wait) do
    local wait = tonumber(states[i] or '0')
    if wait < 2 then return false end  -- it would become ready: the orchestrator decides
    i = i + 1
    writes[#writes + 1] = w .. ':wait'; writes[#writes + 1] = wait - 1
  end
  local run = redis.call('HMGET', KEYS[1], 'status', 'epoch', 'version', 'nodes_running',
                         'nodes_settled', 'nodes_total', 'tasks_total', 'tasks_done',
                         'handoffs', 'failed_nodes', 'parent', 'deciding')
  if run[1] ~= 'running' or (run[2] or '') ~= plan.epoch then return false end
  -- An orchestrator whose commit a handoff refused decides next (commit.lua's mark, in the
  -- server's clock); an expired mark is cleared by this handoff.
  local expired = false
  if run[12] then
    if tonumber(run[12]) > tonumber(redis.call('TIME')[1]) then return false end
    expired = true
  end
  local fin = plan['end']
  local ending = tonumber(run[5] or '0') + 1 >= tonumber(run[6])
  -- The run's last node: it ends here only when it completes the run (no node failed).
  if ending and (not fin or (run[10] and run[10] ~= '[]')) then return false end
  -- It holds: what decide + commit + launch_batch + publish would have written. A queued
  -- task's record is written by launch_batch.lua, here and by Orchestrator._direct_roots;
  -- tests/integration/test_handoff.py holds the three to the same fields.
  redis.call('HSET', KEYS[10], unpack(writes))
  local now = ARGV[3]
  local launched = 0
  for _, c in ipairs(plan.claim) do
    for _, t in ipairs(c[3]) do
      redis.call('HSET', KEYS[t[1]], 'state', 'queued', 'attempt', 1, 'spec', t[2],
                 'queued_at', now)
    end
    redis.call('HSET', KEYS[c[2]], 'started_at', now, 'tasks', #c[3], 'launch_at', now,
               'launched', 1)
    launched = launched + #c[3]
  end
  local run_fields = {'tasks_done', tonumber(run[8] or '0') + 1,
                  'nodes_settled', tonumber(run[5] or '0') + 1,
                  'nodes_running', tonumber(run[4] or '0') - 1 + #plan.claim,
                  'tasks_total', tonumber(run[7] or '0') + launched,
                  'version', tonumber(run[3] or '0') + 1,
                  'handoffs', tonumber(run[9] or '0') + 1}
  if expired then redis.call('HDEL', KEYS[1], 'deciding') end
  if ending then
    -- What store.end_ops writes for a completed run; its hooks only when someone listens.
    run_fields[#run_fields + 1] = 'status'; run_fields[#run_fields + 1] = 'completed'
    run_fields[#run_fields + 1] = 'finished_at'; run_fields[#run_fields + 1] = now
    run_fields[#run_fields + 1] = 'error'; run_fields[#run_fields + 1] = ''
  end
  redis.call('HSET', KEYS[1], unpack(run_fields))
  for _, p in ipairs(plan.push) do
    -- In chunks, as launch_batch.lua: Lua's unpack refuses some thousands of values
    local envelopes = p[2]
    for i = 1, #envelopes, 1000 do
      redis.call('LPUSH', KEYS[p[1]], unpack(envelopes, i, math.min(i + 999, #envelopes)))
    end
  end
  if not ending then return 2 end
  redis.call('ZREM', KEYS[fin.active], fin.run)
  redis.call('ZADD', KEYS[fin.ended], now, fin.run)
  redis.call('RPUSH', KEYS[fin.events], fin.event)
  if fin.hooks or run[11] then
    redis.call('ZADD', KEYS[fin.due], ARGV[3], 'hook|' .. fin.run .. '|completed')
    return 4
  end
  return 3
end

local handed = handoff()
if handed then
  counters[#counters + 1] = 'finished_at'
  counters[#counters + 1] = ARGV[3]
  redis.call('HSET', KEYS[2], unpack(counters))
  return {'recorded', handed}
end
redis.call('HSET', KEYS[2], unpack(counters))
redis.call('HINCRBY', KEYS[1], 'tasks_done', 1)
redis.call('SADD', KEYS[7], ARGV[5])
return {'recorded', 1}
