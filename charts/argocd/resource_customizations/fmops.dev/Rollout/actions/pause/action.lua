-- Hold the Rollout at its current step until spec.paused is set back to false (the resume action).
obj.spec.paused = true
return obj
