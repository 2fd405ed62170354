-- Extends the lease of what the run still holds.
local expires = now + lease
local function renew(key)
  if redis.call('HGET', key, 'lock') == token then redis.call('HSET', key, 'until', expires) end
end
for _, object in ipairs(claim.objects) do
  renew(object.key)
  for _, scope in ipairs(object.ancestors) do
    if redis.call('HEXISTS', scope .. ':readers', token) == 1 then
      redis.call('HSET', scope .. ':readers', token, expires)
      redis.call('PEXPIRE', scope .. ':readers', lease)
    end
  end
end
for _, drop in ipairs(claim.drops) do renew(drop.key) end
return 1
