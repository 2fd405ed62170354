-- Records the newest version the run applied, where it still holds the key, and lets go.
local function release(key, version)
  if redis.call('HGET', key, 'lock') ~= token then return end
  if version then
    local current = redis.call('HGET', key, 'v')
    if not current or version > current then redis.call('HSET', key, 'v', version) end
  end
  redis.call('HDEL', key, 'lock', 'until')
  redis.call('EXPIRE', key, retention)
end
for _, object in ipairs(claim.objects) do
  release(object.key, object.version)
  for _, scope in ipairs(object.ancestors) do redis.call('HDEL', scope .. ':readers', token) end
end
for _, drop in ipairs(claim.drops) do release(drop.key, drop.version) end
return 1
