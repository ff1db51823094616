-- Argo CD health check for keyrotor.io/AccessKeyRotation (installed by argocd-cm.yaml).
-- Healthy: Ready=True for the current generation. Progressing: keyrotor has not reported on the
-- current generation yet, or the first key is being made (RotationPending). Suspended:
-- spec.suspend is true and keyrotor has stopped work on it. Degraded: any other Ready=False
-- reason (InvalidSpec, NotAuthorized, Conflict, UserNotFound, AccessDenied, AwsError,
-- SyncFailed, ...); the message is keyrotor's, which says what to do.
local hs = {}
local generation = obj.metadata and obj.metadata.generation
local status = obj.status
local suspend = obj.spec ~= nil and obj.spec.suspend == true

local ready = nil
if status ~= nil and status.conditions ~= nil then
  for _, condition in ipairs(status.conditions) do
    if condition.type == "Ready" then
      ready = condition
    end
  end
end

if ready == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for keyrotor to report on this object"
  return hs
end
if generation ~= nil and status.observedGeneration ~= generation then
  hs.status = "Progressing"
  hs.message = "Waiting for keyrotor to handle generation " .. tostring(generation) ..
    " (status is of generation " .. tostring(status.observedGeneration) .. ")"
  return hs
end

local reason = ready.reason or ""
local message = ready.message or ""
if ready.status == "True" then
  hs.status = "Healthy"
  hs.message = message
elseif reason == "Suspended" or suspend then
  hs.status = "Suspended"
  hs.message = message
elseif reason == "RotationPending" or ready.status == "Unknown" then
  hs.status = "Progressing"
  hs.message = reason .. ": " .. message
else
  hs.status = "Degraded"
  hs.message = reason .. ": " .. message
end
return hs
