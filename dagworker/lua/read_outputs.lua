-- Read the committed artifacts of one node in one step, when there are few enough: its counts
-- hash (task index -> number of outputs) and then every task's outputs list, instead of a
-- counts read and a second round trip for the lists. Reads only: committed outputs never
-- change (finish_task.lua writes a task's outputs once), so nothing races this script; it
-- exists for the round trip, not for atomicity. A node with more artifacts than ARGV[2] gets
-- its counts back and is read by the caller in bounded chunks.
--
-- KEYS[1] the node's counts hash
-- ARGV[1] the node's outputs key prefix (keys.py: outputs(run, slug, index) = ARGV[1] .. index;
--         same hash tag as KEYS[1])
-- ARGV[2] most artifacts returned inline
-- ARGV[3] '1': inline or nothing: {0} without reading the counts when the node has more tasks
--         than ARGV[2] (a completion path reading a join's inputs stays bounded)
-- returns {1, index, {artifacts...}, index, {artifacts...}, ...} (tasks with outputs only)
--         or {0, index, count, index, count, ...} when there are more than ARGV[2]
if ARGV[3] == '1' and redis.call('HLEN', KEYS[1]) > tonumber(ARGV[2]) then
  return {0}
end
local counts = redis.call('HGETALL', KEYS[1])
local total = 0
for i = 2, #counts, 2 do
  total = total + tonumber(counts[i])
end
local out
if total > tonumber(ARGV[2]) then
  out = {0}
  for i = 1, #counts do
    out[i + 1] = counts[i]
  end
  return out
end
out = {1}
for i = 1, #counts, 2 do
  local n = tonumber(counts[i + 1])
  if n > 0 then
    out[#out + 1] = counts[i]
    out[#out + 1] = redis.call('LRANGE', ARGV[1] .. counts[i], 0, n - 1)
  end
end
return out
