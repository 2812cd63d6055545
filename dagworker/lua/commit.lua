-- Apply an orchestrator's decisions only if the run has not changed since it read it.
-- Closes the stale-orchestrator race: an orchestrator whose lock expired while it computed
-- finds the version moved on and writes nothing (DESIGN §6 "commits are version-checked").
--
-- A successful commit also releases the caller's run lock (compare-and-delete, like lock.py:
-- a lock that expired and was taken by another orchestrator is not touched), one round trip
-- less per settle. A refused commit keeps it: the caller reads again under it.
--
-- KEYS[1]   run hash (holds the "version" fence)   KEYS[2] the run lock
-- KEYS[3..] every other key an op names, by position (all share the run's hash tag)
-- ARGV[1]   the version the caller read, or 'new': the run is being created and must not
--           exist yet (its creation, one step with its roots' tasks and messages; its ops
--           write the version, 1, themselves)
-- ARGV[2]   JSON list of ops: {key_pos, verb, args...}; verbs: hset field value [field value
--           ...] | hdel field | hincrby field n | sadd member | srem member [member ...] |
--           zadd score member | zrem member | rpush value [value ...] | lpush value
--           [value ...] | set value | del
-- ARGV[3]   the caller's lock token, '' when it holds no lock
-- ARGV[4]   for how long (seconds) a refused caller asks handoffs to yield to it
-- returns   the new version, -1 when the run changed, -2 when a run to create exists
--           (nothing written in either case, but for the run's "deciding" field)
--
-- Handoffs (finish_task.lua) bump the version without the run lock, so a stream of them
-- could refuse an orchestrator's commits over and over. A refused commit on a running run
-- therefore marks it "deciding" for ARGV[4] seconds of the server's clock (no host's clock
-- is compared with another's): handoffs leave their completions to the orchestrator (the
-- settle set) until its next commit, which clears the mark, or until the mark expires (a
-- caller that died or found nothing to commit).
local deciding = false
if ARGV[1] == 'new' then
  if redis.call('EXISTS', KEYS[1]) == 1 then return -2 end
else
  local run = redis.call('HMGET', KEYS[1], 'version', 'deciding', 'status')
  if tonumber(run[1] or '0') ~= tonumber(ARGV[1]) then
    if run[3] == 'running' and ARGV[4] ~= '' then
      local t = redis.call('TIME')
      redis.call('HSET', KEYS[1], 'deciding', tonumber(t[1]) + tonumber(ARGV[4]))
    end
    return -1
  end
  deciding = run[2]
end
-- Lua's unpack refuses some thousands of values: long pushes go in chunks.
local function push(verb, key, op)
  for i = 3, #op, 1000 do
    redis.call(verb, key, unpack(op, i, math.min(i + 999, #op)))
  end
end
local ops = cjson.decode(ARGV[2])
for _, op in ipairs(ops) do
  local key = KEYS[op[1]]
  local verb = op[2]
  if verb == 'hset' then redis.call('HSET', key, unpack(op, 3))
  elseif verb == 'hdel' then redis.call('HDEL', key, op[3])
  elseif verb == 'hincrby' then redis.call('HINCRBY', key, op[3], op[4])
  elseif verb == 'sadd' then redis.call('SADD', key, op[3])
  elseif verb == 'srem' then redis.call('SREM', key, unpack(op, 3))
  elseif verb == 'zadd' then redis.call('ZADD', key, op[3], op[4])
  elseif verb == 'zrem' then redis.call('ZREM', key, op[3])
  elseif verb == 'rpush' then push('RPUSH', key, op)
  elseif verb == 'lpush' then push('LPUSH', key, op)
  elseif verb == 'set' then redis.call('SET', key, op[3])
  elseif verb == 'del' then redis.call('DEL', key)
  else return redis.error_reply('commit.lua: unknown verb ' .. tostring(verb))
  end
end
if deciding then redis.call('HDEL', KEYS[1], 'deciding') end
if ARGV[3] ~= '' and redis.call('GET', KEYS[2]) == ARGV[3] then
  redis.call('DEL', KEYS[2])
end
-- (a run created here has its version, 1, in its first HSET: store.create_run puts it there)
if ARGV[1] == 'new' then return 1 end
return redis.call('HINCRBY', KEYS[1], 'version', 1)
