-- Read by every script of the order guard (tasks/listeners/ordered.py), before its own.
-- ARGV: the run's token, the lease (ms), the retention (s), then the claim as JSON:
-- {"objects": [{"key", "versions": [...], "ancestors": [scope keys]}],
-- "drops": [{"key", "versions": [...]}]}, one entry per key. Versions are strings that sort
-- like the versions they are. Release reads "version" (the newest applied) instead.
local token, lease, retention = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local claim = cjson.decode(ARGV[4])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
