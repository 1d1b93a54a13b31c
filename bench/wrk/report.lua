-- Shared by read.lua and write.lua: print one JSON line that bench/api.py parses.
-- Non-2xx answers are counted by wrk in summary.errors.status; the bench refuses a run that has any.
function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      '\nWRK_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
      '"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,' ..
      '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f}\n',
      summary.requests, summary.duration, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency:percentile(50), latency:percentile(90), latency:percentile(99),
      latency.max, latency.mean))
end
