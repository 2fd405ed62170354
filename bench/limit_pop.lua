-- Pop up to ARGV[1] messages from the list KEYS[1] in one call (the bare loop's batch row,
-- bench/limit.py): nil when the list is empty.
return redis.call('RPOP', KEYS[1], ARGV[1])
