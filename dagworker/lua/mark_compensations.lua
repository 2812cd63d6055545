-- Queue the compensation of a batch of one node's tasks, each at most once per rollback round.
-- Closes the double-launch race: two launchers (a reconciler resuming a launch, a redelivered
-- completion) may scan the same tasks; only the first marks a task, so it is counted once in
-- the node's compensation total and gets one compensation attempt number.
--
-- KEYS[1] run hash    KEYS[2] node hash    KEYS[3..] task hashes (candidates, index order)
-- ARGV[1] now         ARGV[2] 1 when failed tasks are compensated too (compensate_failed)
-- returns a flat list {position, attempt, ...} of the tasks newly queued (position: 1-based
--         among KEYS[3..]); nothing when the run is no longer rolling back
if redis.call('HGET', KEYS[1], 'status') ~= 'rolling_back' then
  return {}
end
local out = {}
local marked = 0
for i = 3, #KEYS do
  local state = redis.call('HGET', KEYS[i], 'state')
  local wanted = state == 'completed' or (state == 'failed' and ARGV[2] == '1')
  if wanted and not redis.call('HGET', KEYS[i], 'rb_state') then
    local attempt = tonumber(redis.call('HGET', KEYS[i], 'rb_attempt') or '0') + 1
    redis.call('HSET', KEYS[i], 'rb_state', 'queued', 'rb_attempt', attempt, 'rb_queued_at', ARGV[1])
    marked = marked + 1
    out[#out + 1] = i - 2
    out[#out + 1] = attempt
  end
end
if marked > 0 then
  redis.call('HINCRBY', KEYS[2], 'rb_tasks', marked)
end
return out
