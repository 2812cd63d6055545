-- Lease up to N due retries to this poller. A leased entry stays in the set with its score
-- pushed to now + lease, so a poller that dies after claiming (before publishing) loses nothing:
-- the entry becomes due again when the lease runs out. The publisher removes it once sent.
--
-- KEYS[1] due zset
-- ARGV[1] now   ARGV[2] lease seconds   ARGV[3] max entries
-- returns the members leased
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
local until_ = tonumber(ARGV[1]) + tonumber(ARGV[2])
for _, member in ipairs(due) do
  redis.call('ZADD', KEYS[1], until_, member)
end
return due
