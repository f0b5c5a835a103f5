-- Argo CD actions of a fmops.dev Rollout, enabled when the fm-operator would act on them.
-- promote, abort and retry set a new value of the annotations fmops.dev/promote, fmops.dev/abort and
-- fmops.dev/retry (the operator acts on each value once); pause and resume set spec.paused.
-- Argo CD runs this in gopher-lua (Lua 5.1) with only the base, table and os libraries.

local actions = {}
local spec = obj.spec or {}
local status = obj.status or {}
local phase = status.phase
local active = phase == "Pending" or phase == "Shadowing" or phase == "Progressing" or phase == "Paused"
local paused = spec.paused == true

-- promote moves a canary past a pause step (untilPromoted or a duration), and not while spec.paused.
local onPauseStep = false
local index = tonumber(status.currentStepIndex)
if active and status.canary ~= nil and index ~= nil and index >= 0 and spec.strategy ~= nil and spec.strategy.steps ~= nil then
  local step = spec.strategy.steps[index + 1]
  onPauseStep = step ~= nil and step.pause ~= nil
end
actions["promote"] = {["disabled"] = paused or not onPauseStep}

-- abort rolls the canary in flight back; a first revision has no stable to go back to.
actions["abort"] = {["disabled"] = not (active and status.canary ~= nil)}

-- retry starts a RolledBack or Failed revision again.
local revision = tonumber(status.revision) or 0
actions["retry"] = {["disabled"] = not ((phase == "RolledBack" or phase == "Failed") and revision > 0)}

actions["pause"] = {["disabled"] = paused or not active}
actions["resume"] = {["disabled"] = not paused}

return actions
