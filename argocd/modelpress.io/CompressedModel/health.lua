-- Argo CD health check for modelpress.io/CompressedModel.
--
-- Argo CD runs this with the live object as `obj` and expects a table `hs` with
-- `status` (Healthy | Progressing | Degraded | Suspended) and `message`.
-- Order matters: stale status is never trusted, failures win over a paused rollout,
-- and Healthy needs the operator's Ready=True for the generation Argo CD applied.
local hs = {}

local function condition(status, ctype)
  if status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == ctype then
      return c
    end
  end
  return nil
end

local function describe(c, fallback)
  if c ~= nil and c.message ~= nil and c.message ~= "" then
    return c.message
  end
  if c ~= nil and c.reason ~= nil and c.reason ~= "" then
    return c.reason
  end
  return fallback
end

-- The message of the first of `types` that is False, e.g. {"Validated", "Ready"}.
local function why(status, types, fallback)
  for _, ctype in ipairs(types) do
    local c = condition(status, ctype)
    if c ~= nil and c.status == "False" then
      return describe(c, fallback)
    end
  end
  return fallback
end

local function rollout_paused(spec)
  local serving = spec and spec.serving
  if serving == nil or serving.enabled == false then
    return false
  end
  return serving.rollout ~= nil and serving.rollout.paused == true
end

local generation = obj.metadata.generation
local status = obj.status

if status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe this CompressedModel"
  return hs
end

if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

local phase = status.phase or ""
local specValid = condition(status, "SpecValid")
if specValid ~= nil and specValid.status == "False" then
  hs.status = "Degraded"
  hs.message = "Invalid spec: " .. describe(specValid, "see the SpecValid condition")
  return hs
end

if phase == "Rejected" then
  hs.status = "Degraded"
  hs.message = "Rejected by the validation gate: " .. why(status, { "Validated", "Ready" }, "see status.results")
  return hs
end
if phase == "Failed" then
  hs.status = "Degraded"
  hs.message = "Compression failed: " .. why(status, { "Compressed", "Ready" }, "see the Job's events and logs")
  return hs
end
if phase == "RolledBack" then
  hs.status = "Degraded"
  hs.message = "Rolled back: " .. why(status, { "RolledOut", "Ready" }, "see status.rollout.lastAnalysis")
  return hs
end

if rollout_paused(obj.spec) then
  local percent = ""
  if status.rollout ~= nil and status.rollout.canaryPercent ~= nil then
    percent = " at " .. tostring(status.rollout.canaryPercent) .. "% canary traffic"
  end
  hs.status = "Suspended"
  hs.message = "Rollout paused" .. percent .. " (spec.serving.rollout.paused)"
  return hs
end

local busy = { Pending = true, Queued = true, Compressing = true, RollingOut = true }
local ready = condition(status, "Ready")
if busy[phase] then
  hs.status = "Progressing"
  hs.message = phase .. ": " .. describe(ready, "in progress")
  return hs
end

local readyForGeneration = ready ~= nil
  and (ready.observedGeneration == nil or generation == nil or ready.observedGeneration >= generation)
if ready ~= nil and ready.status == "True" and readyForGeneration then
  hs.status = "Healthy"
  hs.message = describe(ready, "Ready")
  return hs
end

hs.status = "Progressing"
if phase == "" then
  hs.message = describe(ready, "Waiting for the operator")
else
  hs.message = phase .. ": " .. describe(ready, "in progress")
end
return hs
