-- Start one delivery of a compensation attempt, or say why it must not run: the run is no
-- longer rolling back, the attempt is superseded, or it already finished (a redelivery).
--
-- KEYS[1] run hash    KEYS[2] task hash
-- ARGV[1] attempt     ARGV[2] now    ARGV[3] worker host
-- returns {verdict, spec, task state}; verdict: run | finished | stale | inactive | missing
local rb = redis.call('HGET', KEYS[2], 'rb_state')
if not rb then
  return {'missing', '', ''}
end
local attempt = tonumber(redis.call('HGET', KEYS[2], 'rb_attempt') or '0')
if tonumber(ARGV[1]) < attempt then
  return {'stale', '', rb}
end
if rb == 'done' or rb == 'failed' then
  return {'finished', '', rb}
end
if redis.call('HGET', KEYS[1], 'status') ~= 'rolling_back' then
  return {'inactive', '', rb}
end
redis.call('HSET', KEYS[2], 'rb_state', 'running', 'rb_started_at', ARGV[2], 'rb_worker', ARGV[3])
return {'run', redis.call('HGET', KEYS[2], 'spec') or '', redis.call('HGET', KEYS[2], 'state')}
