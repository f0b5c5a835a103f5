-- Argo CD health of a fmops.dev FoundationModel or TaskAdapter (the same script serves both kinds),
-- read from the status the fm-operator writes: observedGeneration and the kstatus conditions
-- Stalled and Reconciling (as Flux's health checks read them), then Ready.
-- Argo CD runs this in gopher-lua (Lua 5.1) with only the base, table and os libraries:
-- no string or math functions here.

local function condition(status, kind)
  if status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local function either(message, otherwise)
  if message ~= nil and message ~= "" then
    return message
  end
  return otherwise or ""
end

local hs = {}
local status = obj.status

if status == nil or status.observedGeneration == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the fm-operator to reconcile the " .. obj.kind
  return hs
end

local generation = tonumber(obj.metadata.generation)
local observed = tonumber(status.observedGeneration)
if generation ~= nil and observed < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the fm-operator to observe spec generation " .. generation .. " (status is of generation " .. observed .. ")"
  return hs
end

-- Nothing more happens until a person acts: the spec is invalid, the training Workflow failed (the
-- message names the step and ends with its log tail) or cannot be rendered, the versions trained for
-- this spec were all held back by the quality gate (the latest version still serves), a TaskAdapter's
-- FoundationModel is missing or stalled itself, or there is no version and no --trainer-image.
local stalled = condition(status, "Stalled")
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = either(stalled.message, status.message)
  return hs
end

-- On its way: a training Workflow is submitted or running (even while an older version serves), or a
-- TaskAdapter waits for its FoundationModel to train the version it needs.
local reconciling = condition(status, "Reconciling")
if reconciling ~= nil and reconciling.status == "True" then
  hs.status = "Progressing"
  hs.message = either(reconciling.message, status.message)
  return hs
end

local ready = condition(status, "Ready")
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = either(ready.message, status.message)
  return hs
end

-- Not Ready, neither Stalled nor Reconciling: a status this operator does not write (one written before
-- these conditions existed is rewritten at the operator's next resync).
hs.status = "Unknown"
hs.message = "Cannot tell the health of " .. obj.kind .. " " .. tostring(obj.metadata.name) .. " in phase " .. tostring(status.phase) .. ": " .. either(status.message, "no status.message")
return hs
