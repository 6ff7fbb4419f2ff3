-- Argo CD health of a drctl.io DRTopology, read from the status the controller of the cluster
-- the object lives in writes (src/topology.rs, DRTopologyStatus).
--
-- Runs in Argo CD's sandbox: Lua 5.1 with the base, table and package libraries and os.time /
-- os.date only. There is no string or math library, so numbers are only compared and
-- concatenated. Conditions read: Valid, Degraded (a hold after an abandoned failover, or for a peer of an older drctl),
-- SyncHealthy (standby), DNSCorrect.
--
-- Thresholds: a standby is Degraded when status.sync.lagSeconds exceeds the annotation
-- drctl.io/health-max-lag-seconds (default 60), when status.sync.missedKeys exceeds
-- spec.failover.maxMissedKeys (default 0, the most a planned failover tolerates), when
-- status.sync.surplusKeys exceeds spec.sync.health.maxSurplusKeys (default 0) or when
-- status.sync.divergedKeys exceeds spec.sync.health.maxDivergedKeys (default 0).
local hs = {}

local function result(status, message)
  hs.status = status
  hs.message = message
  return hs
end

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

local function because(c, fallback)
  if c ~= nil and c.message ~= nil and c.message ~= "" then
    return c.message
  end
  return fallback
end

local function isFalse(c)
  return c ~= nil and c.status == "False"
end

local status = obj.status
local spec = obj.spec or {}
local primary = spec.primary or "?"
if status == nil then
  return result("Progressing", "Waiting for the drctl controller to report status")
end

local generation = obj.metadata.generation
if status.observedGeneration == nil then
  return result("Progressing", "Waiting for the drctl controller to observe the spec")
end
if generation ~= nil and status.observedGeneration < generation then
  return result("Progressing", "Waiting for the drctl controller to observe generation " .. generation ..
    " (status is from generation " .. status.observedGeneration .. ")")
end

local valid = condition(status, "Valid")
if status.phase == "Invalid" or isFalse(valid) then
  return result("Degraded", "Invalid spec: " .. because(valid, "run drctl validate on the topology file"))
end

local failover = status.failover
if failover ~= nil and failover.steps ~= nil then
  local route = (failover.from or "?") .. " -> " .. (failover.to or "?")
  for _, step in ipairs(failover.steps) do
    if step.state == "Failed" then
      local m = "Failover " .. route .. " failed at step " .. step.name
      if step.message ~= nil and step.message ~= "" then
        m = m .. ": " .. step.message
      end
      return result("Degraded", m)
    end
  end
end

-- Both clusters hold after an abandoned failover until the spec changes or the
-- drctl.io/retry-failover annotation does: the primary serves, but the flip did not happen.
local degraded = condition(status, "Degraded")
-- A primary that does not step down for a peer of an older drctl (an upgrade half done).
if degraded ~= nil and degraded.status == "True" and degraded.reason == "PeerVersionSkew" then
  return result("Degraded", "Version skew, holding the primary role: " .. because(degraded, "upgrade the peer's drctl"))
end
if degraded ~= nil and degraded.status == "True" then
  return result("Degraded", "Holding after an abandoned failover: " .. because(degraded, "see the controller's events") ..
    " (retry: change drctl.io/retry-failover or the spec)")
end

if status.phase == "FailingOver" then
  local m = "Failing over to " .. primary
  if failover ~= nil then
    m = "Failing over " .. (failover.from or "?") .. " -> " .. (failover.to or primary)
    local steps = failover.steps or {}
    for i, step in ipairs(steps) do
      if step.state == "Running" or step.state == "Pending" then
        m = m .. ": step " .. step.name .. " (" .. i .. " of " .. #steps .. ")"
        break
      end
    end
  end
  return result("Progressing", m)
end
if status.phase == "Demoting" then
  return result("Progressing", "Demoting to standby; " .. primary .. " is the new primary")
end
if status.phase == "Syncing" then
  return result("Progressing", "Initial sync from " .. primary .. " in progress")
end

local dns = condition(status, "DNSCorrect")
if isFalse(dns) then
  return result("Degraded", "DNS is wrong: " .. because(dns, "the platform domain does not point at the primary"))
end

local sync = status.sync or {}
if status.role == "Standby" then
  local syncHealthy = condition(status, "SyncHealthy")
  if isFalse(syncHealthy) then
    return result("Degraded", "Replication from " .. primary .. " is unhealthy: " .. because(syncHealthy, "see the controller's events"))
  end
  local maxLag = 60
  local annotations = obj.metadata.annotations
  if annotations ~= nil and annotations["drctl.io/health-max-lag-seconds"] ~= nil then
    maxLag = tonumber(annotations["drctl.io/health-max-lag-seconds"]) or maxLag
  end
  if sync.lagSeconds ~= nil and sync.lagSeconds > maxLag then
    return result("Degraded", "Replication lag " .. sync.lagSeconds .. "s exceeds " .. maxLag .. "s")
  end
  local function limit(t, field)
    if t ~= nil and t[field] ~= nil then
      return t[field]
    end
    return 0
  end
  local healthLimits = (spec.sync or {}).health
  local over = {}
  local maxMissed = limit(spec.failover, "maxMissedKeys")
  if sync.missedKeys ~= nil and sync.missedKeys > maxMissed then
    table.insert(over, sync.missedKeys .. " keys of " .. primary .. " are missing here (spec.failover.maxMissedKeys is " ..
      maxMissed .. "); a planned failover would stop")
  end
  local maxSurplus = limit(healthLimits, "maxSurplusKeys")
  if sync.surplusKeys ~= nil and sync.surplusKeys > maxSurplus then
    table.insert(over, sync.surplusKeys .. " keys are only here, not on " .. primary .. " (spec.sync.health.maxSurplusKeys is " ..
      maxSurplus .. "); something besides the mirror writes to this standby")
  end
  local maxDiverged = limit(healthLimits, "maxDivergedKeys")
  if sync.divergedKeys ~= nil and sync.divergedKeys > maxDiverged then
    table.insert(over, sync.divergedKeys .. " keys here differ from " .. primary .. "'s (spec.sync.health.maxDivergedKeys is " ..
      maxDiverged .. ")")
  end
  if #over > 0 then
    return result("Degraded", table.concat(over, "; "))
  end
end

if status.phase == "Degraded" then
  local m = "the controller reports phase Degraded"
  for _, c in ipairs(status.conditions or {}) do
    if c.status == "False" then
      m = c.type .. ": " .. because(c, c.reason or "False")
      break
    end
  end
  return result("Degraded", m)
end
if status.phase ~= "Steady" or status.role == nil then
  return result("Progressing", "Waiting for the drctl controller to reach phase Steady (phase " .. (status.phase or "unset") ..
    ", role " .. (status.role or "unset") .. ")")
end
if dns == nil then
  return result("Progressing", "Waiting for the first DNS check")
end

if status.role == "Primary" then
  return result("Healthy", "Primary; the platform domain points here")
end
if condition(status, "SyncHealthy") == nil then
  return result("Progressing", "Waiting for the first replication check")
end
local m = "Standby of " .. primary .. ", in sync"
if sync.lagSeconds ~= nil then
  m = m .. "; lag " .. sync.lagSeconds .. "s"
end
if sync.missedKeys ~= nil then
  m = m .. "; " .. sync.missedKeys .. " missed, " .. (sync.surplusKeys or 0) .. " surplus, " .. (sync.divergedKeys or 0) .. " diverged keys"
end
return result("Healthy", m)
