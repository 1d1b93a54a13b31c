-- POST a group with a name no other request of any run uses: BENCH_PREFIX-<thread>-<counter>.
-- Environment: BENCH_TOKEN, BENCH_PATH (e.g. /api/v1/groups), BENCH_PREFIX (unique per run).
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(dir .. "report.lua")

local threads = 0
function setup(thread)
   threads = threads + 1
   thread:set("tid", threads)
end

local counter = 0
local prefix = os.getenv("BENCH_PREFIX")
local headers = {
   ["Authorization"] = "Bearer " .. os.getenv("BENCH_TOKEN"),
   ["Content-Type"] = "application/json",
   ["Accept"] = "application/json",
}
local path = os.getenv("BENCH_PATH")

function request()
   counter = counter + 1
   local body = string.format('{"name":"%s-%d-%d"}', prefix, tid, counter)
   return wrk.format("POST", path, headers, body)
end
