-- wrk script: native octet-stream lookups of 256 random ids (little-endian int64) a request.
--   wrk -t2 -c16 -d20s -s loadtests/wrk_lookup.lua http://127.0.0.1:8000/v1/tables/demo/lookup
-- env: ROWS (table rows, default 100000), BATCH (ids a request, default 256)
local rows = tonumber(os.getenv("ROWS") or "100000")
local batch = tonumber(os.getenv("BATCH") or "256")

local function int64_le(v)
  local bytes = {}
  for i = 1, 8 do
    bytes[i] = string.char(v % 256)
    v = math.floor(v / 256)
  end
  return table.concat(bytes)
end

local bodies = {}
math.randomseed(42)
for b = 1, 64 do
  local parts = {}
  for i = 1, batch do
    parts[i] = int64_le(math.random(0, rows - 1))
  end
  bodies[b] = table.concat(parts)
end

local n = 0
request = function()
  n = n % #bodies + 1
  return wrk.format("POST", nil, { ["Content-Type"] = "application/octet-stream" }, bodies[n])
end

response = function(status, headers, body)
  if status ~= 200 then
    io.stderr:write("status " .. status .. "\n")
  end
end
