-- One rate limit decision, atomically: GCRA over one key (safe on Redis Cluster).
-- KEYS[1]  bucket key: {REDIS_KEY_PREFIX}ratelimit:{policy}:{key}
-- ARGV[1]  whole microseconds between two tokens
-- ARGV[2]  capacity (burst) in tokens
-- ARGV[3]  cost in tokens
-- ARGV[4]  "now" in microseconds, or "" to use the server's TIME (production)
-- Returns {allowed (0|1), remaining tokens, ms until full, ms until `cost` is available}.
-- The arithmetic is portico_limiter::decide's, on whole microseconds, so both agree exactly.
local interval = tonumber(ARGV[1])
local capacity = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local now
if ARGV[4] ~= '' then
  now = tonumber(ARGV[4])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local stored = redis.call('GET', KEYS[1])
local tat = now
if stored then
  tat = math.max(tonumber(stored), now)
end
local burst_span = capacity * interval
local new_tat = tat + cost * interval
local allow_at = new_tat - burst_span
if allow_at > now then
  local remaining = math.max(math.floor((burst_span - (tat - now)) / interval), 0)
  return {0, remaining, math.ceil((tat - now) / 1000), math.ceil((allow_at - now) / 1000)}
end
local full_in_ms = math.ceil((new_tat - now) / 1000)
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.max(full_in_ms, 1))
return {1, math.max(math.floor((burst_span - (new_tat - now)) / interval), 0), full_in_ms, 0}
