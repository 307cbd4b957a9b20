-- wrk script used by scripts/bench.sh: sets the request from the environment and prints one
-- machine-readable summary line, so bench.sh never parses wrk's human output.
--   BENCH_METHOD      GET (default) or POST, PUT, ...
--   BENCH_BODY_BYTES  size of the request body (default 0: no body)
-- Output: "BENCH requests=N duration_us=N p50_us=N p99_us=N errors=N status_errors=N"

local method = os.getenv("BENCH_METHOD") or "GET"
local body_bytes = tonumber(os.getenv("BENCH_BODY_BYTES") or "0")

wrk.method = method
if body_bytes > 0 then
  wrk.body = string.rep("x", body_bytes)
  wrk.headers["Content-Type"] = "application/octet-stream"
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH requests=%d duration_us=%d p50_us=%d p99_us=%d errors=%d status_errors=%d\n",
    summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.timeout, e.status))
end
