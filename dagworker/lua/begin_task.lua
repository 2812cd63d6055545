-- Start one delivery of a task attempt. Decides whether the plugin should run at all:
-- a message for an attempt that is already finished (redelivery after the worker crashed past
-- the completion) or superseded (a later attempt exists) must not run the plugin again.
--
-- A task that may run also gets its input artifacts back, when its spec is small: they are
-- immutable once committed (finish_task.lua writes a task's outputs once) and live under the
-- run's hash tag, so reading them here is the read the worker would do next, one round trip
-- less per task. Their keys are built from the artifact ids and ARGV[4] (keys.py's outputs
-- prefix of this run), so they are in the same slot as KEYS.
--
-- KEYS[1] run hash    KEYS[2] task hash
-- ARGV[1] attempt     ARGV[2] now    ARGV[3] worker host
-- ARGV[4] this run's outputs key prefix   ARGV[5] largest spec (bytes) whose inputs are read
-- ARGV[6] '1' when the worker has not compiled this run: the run's input, no_cache and
--         pipeline fingerprint come back too, in the read of its status (no command more)
-- returns {verdict, spec, state, epoch, fetched, input, no_cache, pipeline_fp, id1,
--          artifact1, id2, artifact2, ...} (input, no_cache, pipeline_fp: false unless asked);
--         verdict: run | finished | stale | inactive | missing; epoch: the run's input epoch
--         (a retry with a new input bumps it: caches reload); fetched: 1 when the inputs
--         follow (an artifact is false when missing), 0 when the caller reads them itself
local task = redis.call('HMGET', KEYS[2], 'state', 'attempt', 'spec', 'deliveries')
local state = task[1]
if not state then
  return {'missing', '', ''}
end
local attempt = tonumber(task[2])
local asked = tonumber(ARGV[1])
if asked < attempt then
  return {'stale', '', state}
end
if state == 'completed' or state == 'failed' or state == 'cancelled' or state == 'compensated' then
  return {'finished', '', state}
end
local run
if ARGV[6] == '1' then
  run = redis.call('HMGET', KEYS[1], 'status', 'epoch', 'input', 'no_cache', 'pipeline_fp')
else
  run = redis.call('HMGET', KEYS[1], 'status', 'epoch')
end
local status = run[1]
if status ~= 'running' and status ~= 'paused' then
  return {'inactive', '', status or ''}
end
local spec = task[3]
redis.call('HSET', KEYS[2], 'state', 'running', 'started_at', ARGV[2], 'worker', ARGV[3],
           'attempt', asked, 'deliveries', tonumber(task[4] or '0') + 1)
local out = {'run', spec, state, run[2] or '', 0, run[3] or false, run[4] or false,
             run[5] or false}
if spec and #spec <= tonumber(ARGV[5]) then
  local decoded = cjson.decode(spec)
  out[5] = 1
  -- Inputs copied into the spec (the "a" list, orchestrator.py EMBED_INPUTS_*) need no read.
  if type(decoded['in']) == 'table' and decoded['a'] == nil then
    for _, ids in pairs(decoded['in']) do
      for _, id in ipairs(ids) do
        local node, index, k = string.match(id, '^(.*):(%d+):(%d+)$')
        out[#out + 1] = id
        out[#out + 1] = redis.call('LINDEX', ARGV[4] .. node .. ':' .. index, tonumber(k))
      end
    end
  end
end
return out
