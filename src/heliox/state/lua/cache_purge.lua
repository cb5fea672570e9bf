-- One bounded step of a purge: look at `batch` members of one index from `start` on, delete
-- those matching every filter, drop memberships that no longer hold.
-- ARGV: P, index key, dimension ('all'|'u'|'r'|'t'|'g'), start, batch,
--       then the filters uri, route, tenant, prefix, tag: '' when absent, else '=' .. value;
--       the tenant may also be '~' .. tenant: that tenant's entries or the shared ones (those
--       without a tenant; '~' alone: the shared ones only); on a cluster, then the fence (see
--       bump_generation).
-- Returns {deleted, scanned, removed from this index}; the caller's next start is
-- start + scanned - removed, and it stops when scanned < batch.
local P, index_key, dim = ARGV[1], ARGV[2], ARGV[3]
local start, batch = tonumber(ARGV[4]), tonumber(ARGV[5])

local function filter(i)
  if ARGV[i] == '' then
    return nil
  end
  return string.sub(ARGV[i], 2)
end
local f_uri, f_route, f_tenant, f_prefix, f_tag = filter(6), filter(7), filter(8), filter(9),
  filter(10)
local f_shared = string.sub(ARGV[8], 1, 1) == '~'

local function has_tag(meta, tag)
  for _, g in ipairs(meta.g) do
    if g == tag then
      return true
    end
  end
  return false
end

local function belongs(meta)
  if dim == 'u' then return meta.u == f_uri end
  if dim == 'r' then return meta.r == f_route end
  if dim == 't' then return meta.t == f_tenant end
  if dim == 'g' then return has_tag(meta, f_tag) end
  return true
end

local function matches(meta)
  return (not f_uri or meta.u == f_uri)
    and (not f_route or meta.r == f_route)
    and (not f_tenant or meta.t == f_tenant or (f_shared and not meta.t))
    and (not f_prefix or string.sub(meta.p, 1, #f_prefix) == f_prefix)
    and (not f_tag or has_tag(meta, f_tag))
end

local members = redis.call('ZRANGE', index_key, start, start + batch - 1)
local deleted, removed = 0, 0
for _, member in ipairs(members) do
  local meta = read_index(P .. 'e:' .. member)
  if not meta then
    -- Expired, evicted or unreadable: gone for readers already; tidy the bookkeeping.
    remove_entry(P, member, nil)
    redis.call('ZREM', index_key, member)
    removed = removed + 1
  elseif not belongs(meta) then
    redis.call('ZREM', index_key, member)  -- left over from an overwrite
    removed = removed + 1
  elseif matches(meta) then
    remove_entry(P, member, meta)
    deleted = deleted + 1
    removed = removed + 1
  end
end
-- Every step, the last included: raised only after this step's deletions.
bump_generation(P, ARGV[11])
return {deleted, #members, removed}
