-- Argo CD health of a fmops.dev Rollout, read from the status the fm-operator writes
-- (status.phase, its conditions, observedGeneration, rollbackReason).
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

-- ResolvedRefs reasons that only wait for training to finish; any other (a missing FoundationModel or
-- TaskAdapter, a version the quality gate held back) needs a person.
local WAITING_FOR_TRAINING = {
  VersionNotFound = true,
  AdapterVersionNotFound = true,
  NoCompleteBundle = true,
}

local hs = {}
local status = obj.status

if status == nil or status.observedGeneration == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the fm-operator to reconcile the Rollout"
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

-- "Revision 2 rolled back: <why>", from status.rollbackReason.
local function finished(verb)
  local why = either(status.rollbackReason, status.message)
  local revision = tonumber(status.revision)
  if revision ~= nil and revision > 0 then
    return "Revision " .. revision .. " " .. verb .. ": " .. why
  end
  return "Rollout " .. verb .. ": " .. why
end

local phase = status.phase
if phase == "RolledBack" then
  hs.status = "Degraded"
  hs.message = finished("rolled back")
  return hs
end
if phase == "Failed" then
  hs.status = "Degraded"
  hs.message = finished("failed")
  return hs
end

local refs = condition(status, "ResolvedRefs")
if refs ~= nil and refs.status == "False" then
  if WAITING_FOR_TRAINING[refs.reason] then
    hs.status = "Progressing"
  else
    hs.status = "Degraded"
  end
  hs.message = either(status.message, refs.message)
  return hs
end

local progressing = condition(status, "Progressing")
if phase == "Paused" then
  -- A failed analysis with spec.rollback.onAnalysisFailure false holds the canary for a person:
  -- that is a failure, not a pause.
  if progressing ~= nil and progressing.reason == "AnalysisFailed" then
    hs.status = "Degraded"
  else
    hs.status = "Suspended"
  end
  hs.message = either(status.message, progressing and progressing.message)
  return hs
end

local ready = condition(status, "Ready")
if phase == "Promoted" and ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = either(ready.message, status.message)
  return hs
end

if phase == "Pending" or phase == "Shadowing" or phase == "Progressing" then
  hs.status = "Progressing"
  hs.message = either(status.message, progressing and progressing.message)
  return hs
end

-- A phase this check does not know (an operator newer than it), or Promoted without a Ready condition.
hs.status = "Unknown"
hs.message = "Cannot tell the health of a Rollout in phase " .. tostring(phase) .. ": " .. either(status.message, "no status.message")
return hs
