-- Ask the fm-operator to move the canary past the current pause step.
-- It acts on each value of the annotation fmops.dev/promote once (and records it in
-- status.lastPromoteRequest), so the value must differ from the last one: a UTC timestamp, with a
-- counter when the same second was used already.
local os = require("os")
local key = "fmops.dev/promote"
local last = nil
if obj.status ~= nil then
  last = obj.status.lastPromoteRequest
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
