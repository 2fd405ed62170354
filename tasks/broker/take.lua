-- Take the next message of a consumer's queues and register it as unacknowledged, in one step.
--
-- What kombu's Redis transport does in two (kombu 5.7.0, kombu/transport/redis.py): a BRPOP
-- on the queues' lists, then QoS.append: ZADD the delivery tag to the unacked index, scored
-- by the time it was taken, and HSET [message, exchange, routing_key] into the unacked hash
-- under the tag. A worker killed between the two lost the message; here, no instant lies
-- between them.
--
-- KEYS: the queues' lists in BRPOP's order (the first non-empty one is taken from), then the
-- unacked hash and the unacked index. ARGV: the time to score the message with.
--
-- Returns nil when every list is empty; else {list, item, tag}: the item taken from the list's
-- right end (where BRPOP takes), registered under its delivery tag. An item that is not a
-- kombu envelope with a delivery tag, an exchange and a routing key (kombu could not
-- acknowledge it) is left where it is, with tag '': the worker keeps it as a dead letter, then
-- removes it.
local unacked, index = KEYS[#KEYS - 1], KEYS[#KEYS]
for position = 1, #KEYS - 2 do
  local list = KEYS[position]
  local item = redis.call('LINDEX', list, -1)
  if item then
    local ok, envelope = pcall(cjson.decode, item)
    local properties = ok and type(envelope) == 'table' and envelope['properties']
    local tag = type(properties) == 'table' and properties['delivery_tag']
    local info = type(properties) == 'table' and properties['delivery_info']
    if type(tag) ~= 'string' or tag == '' or type(info) ~= 'table'
        or type(info['exchange']) ~= 'string' or type(info['routing_key']) ~= 'string' then
      return {list, item, ''}
    end
    redis.call('RPOP', list)
    redis.call('ZADD', index, ARGV[1], tag)
    redis.call('HSET', unacked, tag, '[' .. item .. ',' .. cjson.encode(info['exchange'])
      .. ',' .. cjson.encode(info['routing_key']) .. ']')
    return {list, item, tag}
  end
end
return nil
