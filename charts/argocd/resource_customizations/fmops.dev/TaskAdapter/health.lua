-- Argo CD health of a fmops.dev FoundationModel or TaskAdapter (the same script serves both kinds),
-- read from the status the fm-operator writes (status.phase, its conditions, observedGeneration).
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

local accepted = condition(status, "Accepted")
if accepted ~= nil and accepted.status == "False" then
  hs.status = "Degraded"
  hs.message = either(accepted.message, status.message)
  return hs
end

local training = condition(status, "Training")
local ready = condition(status, "Ready")

-- A training Workflow is submitted or running, even while an older version serves.
if status.phase == "Training" then
  hs.status = "Progressing"
  hs.message = either(status.message, training and training.message)
  return hs
end

-- The training Workflow failed (the message names the step and ends with its log tail), or the
-- spec cannot be rendered into one.
if status.phase == "Failed" then
  hs.status = "Degraded"
  hs.message = either(status.message, either(training and training.message, ready and ready.message))
  return hs
end

-- The newest version trained for this spec is worse than the latest and was held back: the
-- latest version still serves, but the spec in Git did not give a version that can be served.
local gate = condition(status, "QualityGate")
if gate ~= nil and gate.status == "False" then
  hs.status = "Degraded"
  hs.message = gate.message
  return hs
end

if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = either(ready.message, status.message)
  return hs
end

-- Not Ready, and nothing will change until a person acts: a TaskAdapter's FoundationModel does not
-- exist, or there is no version yet and the operator trains nothing (it runs without --trainer-image).
local refs = condition(status, "ResolvedRefs")
if refs ~= nil and refs.status == "False" and refs.reason == "FoundationModelNotFound" then
  hs.status = "Degraded"
  hs.message = either(refs.message, status.message)
  return hs
end
if training ~= nil and training.reason == "NoTrainerImage" then
  hs.status = "Degraded"
  hs.message = training.message
  return hs
end

-- Not Ready yet, but on its way: a TaskAdapter waits for its FoundationModel's first version, or for the
-- pinned version to be trained.
hs.status = "Progressing"
hs.message = either(status.message, either(refs and refs.message, ready and ready.message))
return hs
