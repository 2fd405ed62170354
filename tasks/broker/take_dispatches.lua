-- Take the next dispatch messages of a queue and register each as unacknowledged, in one step
-- (tasks/broker/taking.py: what it takes, and why).
--
-- What kombu's Redis transport does for each message it delivers (kombu 5.7.0,
-- kombu/transport/redis.py): pop the queue's list from its right end (kombu LPUSHes and
-- BRPOPs), then QoS.append: ZADD the delivery tag to the unacked index, scored by the time it
-- was taken, and HSET [message, exchange, routing_key] into the unacked hash under the tag.
--
-- KEYS: the queue's list, the unacked hash, the unacked index. ARGV: how many messages at most,
-- how many bytes at most (the first one whatever its size), the time to score them with, the
-- dispatch task's name. Returns the delivery tag and the item of each message taken, oldest
-- first: {tag, item, tag, item, ...}. The first item that is not a dispatch task message
-- Celery would hand to the dispatch task at once goes back where it was, and the round stops.
local taken, size = {}, 0
local function absent(value) return value == nil or value == cjson.null end
for _ = 1, tonumber(ARGV[1]) do
  local item = redis.call('RPOP', KEYS[1])
  if not item then break end
  local ok, message = pcall(cjson.decode, item)
  local fits = ok and type(message) == 'table' and type(message['headers']) == 'table'
    and type(message['properties']) == 'table'
  local headers, properties, info
  if fits then
    headers, properties = message['headers'], message['properties']
    info = properties['delivery_info']
    fits = headers['task'] == ARGV[4] and absent(headers['eta'])
      and absent(headers['expires']) and absent(headers['compression'])
      and message['content-type'] == 'application/json'
      and (absent(properties['body_encoding']) or properties['body_encoding'] == 'base64')
      and type(message['body']) == 'string'
      and type(properties['delivery_tag']) == 'string'
      and not properties['delivery_tag']:find('[\128-\255]')
      and type(info) == 'table' and type(info['routing_key']) == 'string'
      and (absent(info['exchange']) or type(info['exchange']) == 'string')
  end
  if not fits or (#taken > 0 and size + #item > tonumber(ARGV[2])) then
    redis.call('RPUSH', KEYS[1], item)
    break
  end
  size = size + #item
  local exchange = info['exchange']
  if absent(exchange) then exchange = '' end
  redis.call('ZADD', KEYS[3], ARGV[3], properties['delivery_tag'])
  redis.call('HSET', KEYS[2], properties['delivery_tag'],
    '[' .. item .. ',' .. cjson.encode(exchange) .. ',' .. cjson.encode(info['routing_key']) .. ']')
  taken[#taken + 1] = properties['delivery_tag']
  taken[#taken + 1] = item
end
return taken
