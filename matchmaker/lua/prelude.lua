-- Shared by every script that decodes or writes a record (included by matchmaker/redis_scripts.py).
-- enc(): a JSON encoder that keeps every double exact (%.17g); cjson.encode keeps only 14
-- digits and would corrupt timestamps and loads. cjson.decode is exact (strtod).
local NULL = cjson.null
local function enc(v)
  local t = type(v)
  if t == 'string' then return cjson.encode(v) end
  if t == 'number' then
    if v ~= v or v == math.huge or v == -math.huge then return 'null' end
    return string.format('%.17g', v)
  end
  if t == 'boolean' then return v and 'true' or 'false' end
  if t == 'table' then
    local parts = {}
    if v[1] ~= nil or next(v) == nil then
      for i = 1, #v do parts[i] = enc(v[i]) end
      return '[' .. table.concat(parts, ',') .. ']'
    end
    for k, x in pairs(v) do parts[#parts + 1] = cjson.encode(k) .. ':' .. enc(x) end
    return '{' .. table.concat(parts, ',') .. '}'
  end
  return 'null'
end
local function truthy(s) return s ~= nil and s ~= NULL and s ~= false and s ~= '' end
