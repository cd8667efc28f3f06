-- Argo CD health of any Wireway object, from its
-- Ready condition: Healthy when Ready is True for the current generation, Progressing
-- while the operator has not observed the generation or nodes are still applying it
-- (reason Progressing), Degraded for any other reason (the message says what to fix).
local hs = {}
local status = obj.status
if status == nil or status.conditions == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the Wireway operator"
  return hs
end
local generation = obj.metadata.generation
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the Wireway operator to observe generation " .. generation
  return hs
end
for _, condition in ipairs(status.conditions) do
  if condition.type == "Ready" then
    if condition.status == "True" then
      hs.status = "Healthy"
    elseif condition.reason == "Progressing" then
      hs.status = "Progressing"
    else
      hs.status = "Degraded"
    end
    hs.message = (condition.reason or "") .. ": " .. (condition.message or "")
    return hs
  end
end
hs.status = "Progressing"
hs.message = "Waiting for the Ready condition"
return hs
