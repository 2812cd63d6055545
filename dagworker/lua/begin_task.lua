-- Start one delivery of a task attempt. Decides whether the plugin should run at all:
-- a message for an attempt that is already finished (redelivery after the worker crashed past
-- the completion) or superseded (a later attempt exists) must not run the plugin again.
--
-- KEYS[1] run hash    KEYS[2] task hash
-- ARGV[1] attempt     ARGV[2] now    ARGV[3] worker host
-- returns {verdict, spec, state, epoch}; verdict: run | finished | stale | inactive | missing;
--         epoch: the run's input epoch (a retry with a new input bumps it: caches reload)
local state = redis.call('HGET', KEYS[2], 'state')
if not state then
  return {'missing', '', ''}
end
local attempt = tonumber(redis.call('HGET', KEYS[2], 'attempt'))
local asked = tonumber(ARGV[1])
if asked < attempt then
  return {'stale', '', state}
end
if state == 'completed' or state == 'failed' or state == 'cancelled' or state == 'compensated' then
  return {'finished', '', state}
end
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'running' and status ~= 'paused' then
  return {'inactive', '', status or ''}
end
local spec = redis.call('HGET', KEYS[2], 'spec')
redis.call('HSET', KEYS[2], 'state', 'running', 'started_at', ARGV[2], 'worker', ARGV[3],
           'attempt', asked)
redis.call('HINCRBY', KEYS[2], 'deliveries', 1)
return {'run', spec, state, redis.call('HGET', KEYS[1], 'epoch') or ''}
