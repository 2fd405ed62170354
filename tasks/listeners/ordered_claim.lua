-- Claims the objects of a run of an ordered listener (after ordered_preamble.lua): {0} when
-- some are held by another run, else {1, then 1 or 0 for each version: newer than applied}.
local function held(key, field, until_field)
  local values = redis.call('HMGET', key, field, until_field)
  return values[1] and values[1] ~= token and tonumber(values[2]) > now
end
local function read(key)
  local entries = redis.call('HGETALL', key .. ':readers')
  for i = 1, #entries, 2 do
    if entries[i] ~= token and tonumber(entries[i + 1]) > now then return true end
  end
  return false
end
for _, object in ipairs(claim.objects) do
  if held(object.key, 'lock', 'until') then return {0} end
  for _, scope in ipairs(object.ancestors) do
    if held(scope, 'lock', 'until') or held(scope, 'wait', 'wait_until') then return {0} end
  end
end
for _, drop in ipairs(claim.drops) do
  if held(drop.key, 'lock', 'until') then return {0} end
  if read(drop.key) then
    -- Changes under this parent are running: new ones wait behind this delete.
    redis.call('HSET', drop.key, 'wait', token, 'wait_until', now + math.max(lease, 10000))
    redis.call('EXPIRE', drop.key, retention)
    return {0}
  end
end
local expires = now + lease
local fresh = {1}
local function flag(versions, floor)
  for _, version in ipairs(versions) do
    table.insert(fresh, version > floor and 1 or 0)
  end
end
for _, object in ipairs(claim.objects) do
  redis.call('HSET', object.key, 'lock', token, 'until', expires)
  redis.call('EXPIRE', object.key, retention)
  local floor = redis.call('HGET', object.key, 'v') or ''
  for _, scope in ipairs(object.ancestors) do
    redis.call('HSET', scope .. ':readers', token, expires)
    redis.call('PEXPIRE', scope .. ':readers', lease)
    local dropped = redis.call('HGET', scope, 'v')
    if dropped and dropped > floor then floor = dropped end
  end
  flag(object.versions, floor)
end
for _, drop in ipairs(claim.drops) do
  redis.call('HSET', drop.key, 'lock', token, 'until', expires)
  -- Whichever run of a delete of this parent set it, the wait is over (another one still
  -- waiting sets it again).
  redis.call('HDEL', drop.key, 'wait', 'wait_until')
  redis.call('EXPIRE', drop.key, retention)
  flag(drop.versions, redis.call('HGET', drop.key, 'v') or '')
end
return fresh
