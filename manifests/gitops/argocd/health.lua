-- Argo CD health of a vmshift object (any kind of the vmshift.io group), from the kstatus
-- conditions the operator writes: Stalled=True is Degraded (a person must act: the condition's
-- reason and message say what), Reconciling=True is Progressing (a migration, a drain, a start
-- under way), Ready=True is Healthy. Lua 5.1, as Argo CD runs it; `obj` is the object.
local hs = {}
local meta = obj.metadata or {}
local status = obj.status or {}
local conditions = status.conditions or {}

if meta.deletionTimestamp ~= nil then
  hs.status = "Progressing"
  hs.message = "Being deleted: the vmshift operator is releasing it."
  return hs
end

if #conditions == 0 then
  if obj.kind == "MigrationPolicy" then
    -- The API server validated it at admission; the operator reads it and writes no status.
    hs.status = "Healthy"
    hs.message = "Accepted by the API server."
    return hs
  end
  hs.status = "Progressing"
  hs.message = "Waiting for the vmshift operator to report status."
  return hs
end

if meta.generation ~= nil and status.observedGeneration ~= nil and status.observedGeneration < meta.generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the vmshift operator to see generation " .. meta.generation ..
    " (it last saw " .. status.observedGeneration .. ")."
  return hs
end

local by_type = {}
for _, condition in ipairs(conditions) do
  by_type[condition.type] = condition
end

local function is_true(kind)
  return by_type[kind] ~= nil and by_type[kind].status == "True"
end

local function say(kind)
  local c = by_type[kind]
  local text = c.message or ""
  if c.reason ~= nil and c.reason ~= "" then
    text = c.reason .. ": " .. text
  end
  if status.phase ~= nil then
    text = status.phase .. ". " .. text
  end
  return text
end

if is_true("Stalled") then
  hs.status = "Degraded"
  hs.message = say("Stalled")
elseif is_true("Reconciling") then
  hs.status = "Progressing"
  hs.message = say("Reconciling")
elseif is_true("Ready") then
  hs.status = "Healthy"
  hs.message = say("Ready")
elseif by_type["Ready"] ~= nil and by_type["Ready"].status == "False" then
  hs.status = "Degraded"
  hs.message = say("Ready")
else
  hs.status = "Progressing"
  hs.message = "Waiting for the vmshift operator to decide whether it is ready."
end
return hs
