-- Let a paused Rollout continue from where it was held.
obj.spec.paused = false
return obj
