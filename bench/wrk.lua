-- wrk script of `python -m bench`. Arguments after `--`: MODE OUT THREADS [FIRST LAST [SIZE]]
--   healthz                    GET /healthz (the HTTP ceiling: no database)
--   dispatch [WAIT]            POST /dispatch/next, a distinct worker id per request
--   dispatch_near              the same with a van's position, random in the Bay Area's bounding box
--   dispatch_auth KEYS         POST /dispatch/next with the worker keys of file KEYS in turn (worker id from
--                              the key)
--   approve FIRST LAST         POST /task/approve, suggestion ids FIRST..LAST, each once
--   approve_many FIRST LAST N  POST /tasks/approve, N suggestion ids per request
--   complete FIRST LAST        POST /task/{id}/complete, task ids FIRST..LAST, each once
-- done() writes a JSON summary to OUT; each thread appends "task_id worker_id" for every 200 of a dispatch to
-- OUT.ids.<thread>, line-buffered: wrk never closes a thread's Lua state, so a full buffer would be lost.
local threads = {}

function setup(thread)
  thread:set("thread_no", #threads)
  table.insert(threads, thread)
end

function init(args)
  mode, out, nthreads = args[1], args[2], tonumber(args[3])
  -- (args[4] is not a number in every mode: dispatch_auth's is a file)
  first, last, size = tonumber(args[4]) or 0, tonumber(args[5]) or 0, tonumber(args[6]) or 1
  wait = args[4] or "0"
  statuses = {}
  sent = 0
  json = { ["Content-Type"] = "application/json" }
  -- Ids (or blocks of `size` ids) are striped over the threads so that each is used once.
  next_id = first + thread_no * size
  if mode == "dispatch_auth" then
    keys = {}
    for line in io.lines(args[4]) do keys[#keys + 1] = "Bearer " .. line end
  end
  if mode == "dispatch_near" then math.randomseed(thread_no + 1) end
  if mode == "dispatch" or mode == "dispatch_near" or mode == "dispatch_auth" then
    ids = io.open(out .. ".ids." .. thread_no, "w")
    ids:setvbuf("line")
  end
end

function request()
  sent = sent + 1
  if mode == "healthz" then
    return wrk.format("GET", "/healthz")
  elseif mode == "dispatch" then
    local body = '{"worker_id":"w' .. thread_no .. '-' .. sent .. '"'
    if wait ~= "0" then body = body .. ',"wait_seconds":' .. wait end
    return wrk.format("POST", "/dispatch/next", json, body .. "}")
  elseif mode == "dispatch_near" then
    local body = string.format('{"worker_id":"w%d-%d","lat":%.5f,"lon":%.5f}', thread_no, sent,
      37.2 + math.random() * 0.7, -122.55 + math.random() * 0.85)
    return wrk.format("POST", "/dispatch/next", json, body)
  elseif mode == "dispatch_auth" then
    -- The threads take the keys in turn, each its own stripe.
    local key = keys[(sent * nthreads + thread_no) % #keys + 1]
    return wrk.format("POST", "/dispatch/next", { ["Content-Type"] = "application/json", ["Authorization"] = key }, "{}")
  end
  local id = next_id
  next_id = next_id + nthreads * size
  if id > last then
    -- Ran dry: stop this thread rather than send requests that measure nothing.
    wrk.thread:stop()
    return wrk.format("GET", "/healthz")
  end
  if mode == "approve" then
    return wrk.format("POST", "/task/approve", json, '{"suggestion_id":' .. id .. '}')
  elseif mode == "approve_many" then
    local batch = {}
    for i = id, math.min(id + size - 1, last) do batch[#batch + 1] = i end
    return wrk.format("POST", "/tasks/approve", json, '{"suggestion_ids":[' .. table.concat(batch, ",") .. ']}')
  elseif mode == "complete" then
    return wrk.format("POST", "/task/" .. id .. "/complete", json, "{}")
  end
  error("unknown mode " .. mode)
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  if status == 200 and ids ~= nil then
    ids:write(body:match('"id":(%d+)'), " ", body:match('"worker_id":"([^"]*)"'), "\n")
  end
end

function done(summary, latency, requests)
  -- done() runs in wrk's main Lua state, where init() never ran: the arguments come from a thread.
  local out = threads[1]:get("out")
  local counts = {}
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("statuses")) do
      counts[status] = (counts[status] or 0) + n
    end
  end
  local parts = {}
  for status, n in pairs(counts) do parts[#parts + 1] = '"' .. status .. '":' .. n end
  local e = summary.errors
  local f = io.open(out, "w")
  f:write(string.format(
    '{"requests":%d,"duration_s":%.6f,"statuses":{%s},' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"timeout":%d},' ..
    '"latency_us":{"mean":%.1f,"p50":%d,"p95":%d,"p99":%d,"max":%d}}\n',
    summary.requests, summary.duration / 1e6, table.concat(parts, ","),
    e.connect, e.read, e.write, e.timeout,
    latency.mean, latency:percentile(50), latency:percentile(95), latency:percentile(99), latency.max))
  f:close()
end
