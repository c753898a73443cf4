-- wrk script: one-alert Alertmanager webhook payloads, each one unique (so
-- none is a duplicate), spread over USERS users (default 1000).
-- Used by `notimeter-bench core`; by hand:
--   USERS=1000 wrk -t2 -c32 -d10s -s bench/wrk/alerts.lua http://127.0.0.1:9097/v1/alertmanager
local users = tonumber(os.getenv("USERS") or "1000")
local threads = 0
local counter = 0

function setup(thread)
  thread:set("id", threads)
  threads = threads + 1
end

function request()
  counter = counter + 1
  local n = (id or 0) * 1000000000 + counter
  local user = "user" .. (n % users)
  local body = string.format(
    '{"version":"4","groupKey":"{}:{user_id=\\"%s\\"}#%d","truncatedAlerts":0,"status":"firing",'
    .. '"receiver":"notimeter","groupLabels":{"alertname":"HighCPU"},'
    .. '"commonLabels":{"alertname":"HighCPU","job":"node","severity":"critical"},'
    .. '"commonAnnotations":{"summary":"High CPU"},"externalURL":"http://alertmanager:9093",'
    .. '"alerts":[{"status":"firing","labels":{"alertname":"HighCPU","user_id":"%s",'
    .. '"instance":"host-0:9100","job":"node","severity":"critical"},'
    .. '"annotations":{"description":"CPU on host-0 is above 90%% for 5 minutes","summary":"High CPU"},'
    .. '"startsAt":"2026-11-24T10:00:00.000Z","endsAt":"0001-01-01T00:00:00Z",'
    .. '"generatorURL":"http://prometheus:9090/graph?g0.expr=node_cpu","fingerprint":"%x"}]}',
    user, n, user, n)
  return wrk.format("POST", nil, {["Content-Type"] = "application/json"}, body)
end
