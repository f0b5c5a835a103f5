-- Ask the fm-operator to roll the canary in flight back: all traffic to the stable.
-- It acts on each value of the annotation fmops.dev/abort once (and records it in
-- status.lastAbortRequest), so the value must differ from the last one: a UTC timestamp, with a
-- counter when the same second was used already.
local os = require("os")
local key = "fmops.dev/abort"
local last = nil
if obj.status ~= nil then
  last = obj.status.lastAbortRequest
end
if obj.metadata.annotations == nil then
  obj.metadata.annotations = {}
end
local current = obj.metadata.annotations[key]
local stamp = os.date("!%Y%m%dT%H%M%SZ") .. "-argocd"
local value = stamp
local n = 1
while value == current or value == last do
  n = n + 1
  value = stamp .. "-" .. n
end
obj.metadata.annotations[key] = value
return obj
