-- Runs config/argocd/health.lua (Argo CD's health check for the Wireway kinds) on
-- objects in every state: `lua5.4 tests/argocd/health_test.lua` from the repository.
local function health(object)
  local env = setmetatable({ obj = object }, { __index = _G })
  local check = assert(loadfile("config/argocd/health.lua", "t", env))
  return check()
end

local function ready(status, reason, message)
  return { { type = "Ready", status = status, reason = reason, message = message } }
end

local cases = {
  { "no status yet", { metadata = { generation = 1 } }, "Progressing" },
  { "generation not observed",
    { metadata = { generation = 3 }, status = { observedGeneration = 2, conditions = ready("True", "Ready", "ok") } },
    "Progressing" },
  { "ready",
    { metadata = { generation = 3 }, status = { observedGeneration = 3, conditions = ready("True", "Ready", "4 members") } },
    "Healthy", "Ready: 4 members" },
  { "nodes applying",
    { metadata = { generation = 1 }, status = { observedGeneration = 1, conditions = ready("False", "Progressing", "1 of 3 nodes") } },
    "Progressing" },
  { "not admitted",
    { metadata = { generation = 1 }, status = { observedGeneration = 1, conditions = ready("False", "NotAdmitted", "no Admission") } },
    "Degraded", "NotAdmitted: no Admission" },
  { "pool exhausted",
    { metadata = { generation = 2 }, status = { observedGeneration = 2, conditions = ready("False", "AddressPoolExhausted", "full") } },
    "Degraded" },
  { "manifests without generations", { metadata = {}, status = { conditions = ready("True", "Ready", "ok") } }, "Healthy" },
}

local failures = 0
for _, case in ipairs(cases) do
  local name, object, want, message = case[1], case[2], case[3], case[4]
  local got = health(object)
  if got.status ~= want or (message ~= nil and got.message ~= message) then
    failures = failures + 1
    print(string.format("FAIL %s: %s (%s), want %s (%s)", name, got.status, got.message, want, message or "any"))
  end
end
print(string.format("%d cases, %d failures", #cases, failures))
os.exit(failures == 0 and 0 or 1)
