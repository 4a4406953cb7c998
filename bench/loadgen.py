"""Load generators: wrk (preferred) or a multi-process Python client of the same shape.

Both are closed-loop: every connection sends its next request as soon as
the previous answer arrived, on keep-alive HTTP/1.1, for a fixed number of
seconds. Both report the same numbers: completed requests, req/s, latency
percentiles of completed requests, non-2xx answers by status, socket errors.
The Python one also keeps the 2xx answers' latency apart (`ok_p50_ms`,
`ok_p99_ms`, ...) and counts the 503 `overloaded` answers (`overloaded`):
wrk's Lua `response()` hook sees an answer's status but not its latency, and
its latency histogram is one for every answer, so wrk cannot. Its seconds
run until its last answer: it waits for the requests in flight at the end
(wrk drops them), which matters when answers take seconds (overload).

With `Workload.honour_retry_after` (the Python generator only), a connection
answered 429 or 503 with `Retry-After` waits before its next request, as a
well-kept client does (`retry_wait`): the seconds the header names, plus a
random share of as much again, so refused clients do not all come back in
the same instant. A wait is idle time, not a request: it is in no latency,
and a wait that would end past the measured seconds ends the connection's
load instead (it would only stretch the seconds that req/s divides by).
The result then also counts the waits (`retry_waits`) and their seconds
(`waited_seconds`).

A workload is one of three request shapes, each request drawn at random:
  post_order   POST /api/v1/orders  {"customer_id", "items": [distinct skus, quantity 1-3]}
  get_order    GET  /api/v1/orders/{one of the seeded ids}
  list_orders  GET  /api/v1/orders?customer_id={one of the seeded customers}
Every request carries `Authorization: Bearer <token>`.
"""
import email.utils
import http.client
import json
import math
import multiprocessing
import os
import random
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

API = "/api/v1"
KINDS = ("post_order", "get_order", "list_orders")
# A request slower than this is a socket error (timeout), not a latency sample.
REQUEST_TIMEOUT_SECONDS = 30
OVERLOADED = "503 overloaded"  # the Python generator's key for the gateway's load-shedding answers
# The answers whose Retry-After a client honouring it waits out (RFC 9110 gives it meaning on 3xx
# too; the gateway sends it on these two: rate limited, overloaded or a service's circuit open).
RETRY_AFTER_STATUSES = (429, 503)


@dataclass
class Workload:
    kind: str
    token: str
    customers: list
    skus: list = field(default_factory=list)
    order_ids: list = field(default_factory=list)
    items_per_order: int = 2
    # Wait out Retry-After before a connection's next request (the Python generator only).
    honour_retry_after: bool = False

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown workload kind {self.kind!r}")
        if self.kind == "post_order" and len(self.skus) < self.items_per_order:
            raise ValueError("fewer skus than items per order")


def cpu_count():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def choose(preference="auto"):
    """'wrk' or 'python': wrk when it is installed (unless told otherwise)."""
    preference = (preference or "auto").lower()
    if preference not in ("auto", "wrk", "python"):
        raise ValueError(f"BENCH_LOADGEN must be auto, wrk or python, not {preference!r}")
    if preference == "python":
        return "python"
    if shutil.which("wrk"):
        return "wrk"
    if preference == "wrk":
        raise RuntimeError("BENCH_LOADGEN=wrk but wrk is not installed (Debian/Ubuntu: apt-get install wrk)")
    return "python"


def describe(loadgen):
    if loadgen == "wrk":
        out = subprocess.run(["wrk", "-v"], capture_output=True, text=True)
        return (out.stdout + out.stderr).splitlines()[0].strip() if (out.stdout + out.stderr) else "wrk"
    return f"python http.client, up to {cpu_count()} processes x threads (one keep-alive connection each)"


def run(loadgen, base_url, workload, connections, seconds):
    """Drive `base_url` with `connections` connections for `seconds`; the result dict."""
    if loadgen == "wrk":
        result = _run_wrk(base_url, workload, connections, seconds)
    else:
        result = _run_python(base_url, workload, connections, seconds)
    result["loadgen"] = loadgen
    result["connections"] = connections
    return result


def one_request(base_url, workload, rng=random):
    """(status, body text) of a single request of `workload`: a sanity check before the load."""
    method, path, body = _make_request(workload, rng)
    parts = urlsplit(base_url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=REQUEST_TIMEOUT_SECONDS)
    try:
        conn.request(method, path, body=body, headers=_headers(workload, body))
        response = conn.getresponse()
        return response.status, response.read().decode("utf-8", "replace")
    finally:
        conn.close()


# ---- wrk -------------------------------------------------------------------

_LUA = r"""
-- Generated by bench/loadgen.py for one case; data first, then the logic.
local kind = @KIND@
local token = @TOKEN@
local items_per_order = @ITEMS@
local customers = @CUSTOMERS@
local skus = @SKUS@
local ids = @IDS@
local seed = @SEED@

local threads = {}
local thread_count = 0

function setup(thread)
  thread_count = thread_count + 1
  thread:set("tid", thread_count)
  table.insert(threads, thread)
end

local post_headers = {["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. token}
local get_headers = {["Authorization"] = "Bearer " .. token}

function init(args)
  math.randomseed(seed + tid * 7919)
  for i = 1, 20 do math.random() end
  non2xx = 0
  status_counts = {}
  sample = ""
end

local function pick_skus(n)
  local chosen, out = {}, {}
  while #out < n do
    local sku = skus[math.random(#skus)]
    if not chosen[sku] then
      chosen[sku] = true
      out[#out + 1] = sku
    end
  end
  return out
end

function request()
  if kind == "post_order" then
    local lines = {}
    for i, sku in ipairs(pick_skus(items_per_order)) do
      lines[i] = string.format('{"sku":"%s","quantity":%d}', sku, math.random(3))
    end
    local body = string.format('{"customer_id":"%s","items":[%s]}',
                               customers[math.random(#customers)], table.concat(lines, ","))
    return wrk.format("POST", "/api/v1/orders", post_headers, body)
  elseif kind == "get_order" then
    return wrk.format("GET", "/api/v1/orders/" .. ids[math.random(#ids)], get_headers)
  else
    return wrk.format("GET", "/api/v1/orders?customer_id=" .. customers[math.random(#customers)], get_headers)
  end
end

function response(status, headers, body)
  if status < 200 or status > 299 then
    non2xx = non2xx + 1
    local key = tostring(status)
    status_counts[key] = (status_counts[key] or 0) + 1
    if sample == "" and body then
      sample = key .. " " .. string.sub(body, 1, 200)
    end
  end
end

local function clean(text)
  text = string.gsub(text, '[%c\\"]', " ")
  return text
end

function done(summary, latency, requests)
  local non2xx_total = 0
  local statuses = {}
  local first_sample = ""
  for _, thread in ipairs(threads) do
    non2xx_total = non2xx_total + (thread:get("non2xx") or 0)
    local counts = thread:get("status_counts") or {}
    for code, n in pairs(counts) do
      statuses[code] = (statuses[code] or 0) + n
    end
    local s = thread:get("sample") or ""
    if first_sample == "" then first_sample = s end
  end
  local parts = {}
  for code, n in pairs(statuses) do
    parts[#parts + 1] = string.format('"%s":%d', code, n)
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests":%d,"duration_us":%d,"connect_errors":%d,"read_errors":%d,' ..
    '"write_errors":%d,"timeouts":%d,"non2xx":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,' ..
    '"max_us":%d,"mean_us":%.1f,"statuses":{%s},"sample":"%s"}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.timeout, non2xx_total,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean, table.concat(parts, ","), clean(first_sample)))
end
"""


def _lua_list(values):
    # JSON string literals are valid Lua string literals for the ASCII we send.
    return "{" + ",".join(json.dumps(str(v)) for v in values) + "}"


def _lua_script(workload):
    ids = workload.order_ids or [""]
    return (_LUA.replace("@KIND@", json.dumps(workload.kind))
            .replace("@TOKEN@", json.dumps(workload.token))
            .replace("@ITEMS@", str(int(workload.items_per_order)))
            .replace("@CUSTOMERS@", _lua_list(workload.customers))
            .replace("@SKUS@", _lua_list(workload.skus or [""]))
            .replace("@IDS@", _lua_list(ids))
            .replace("@SEED@", str(random.randrange(1, 1 << 30))))


def _run_wrk(base_url, workload, connections, seconds):
    if workload.honour_retry_after:  # its Lua would have to, and nothing here needs it
        raise ValueError("wrk does not honour Retry-After: use the Python load generator")
    seconds = max(1, int(math.ceil(seconds)))
    threads = max(1, min(connections, cpu_count()))
    with tempfile.TemporaryDirectory(prefix="bench-wrk-") as tmp:
        script = Path(tmp) / "case.lua"
        script.write_text(_lua_script(workload))
        cmd = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s",
               "--timeout", f"{REQUEST_TIMEOUT_SECONDS}s", "-s", str(script), base_url]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + REQUEST_TIMEOUT_SECONDS + 30)
    line = next((l for l in out.stdout.splitlines() if l.startswith("BENCH_RESULT ")), None)
    if line is None:
        raise RuntimeError(f"wrk gave no result (exit {out.returncode}): {out.stdout[-500:]} {out.stderr[-500:]}")
    raw = json.loads(line[len("BENCH_RESULT "):])
    duration = raw["duration_us"] / 1e6
    socket_errors = raw["connect_errors"] + raw["read_errors"] + raw["write_errors"] + raw["timeouts"]
    return _summary(
        requests=raw["requests"], duration=duration,
        p50=raw["p50_us"] / 1000, p90=raw["p90_us"] / 1000, p99=raw["p99_us"] / 1000,
        maximum=raw["max_us"] / 1000, mean=raw["mean_us"] / 1000,
        non2xx=raw["non2xx"], statuses=raw["statuses"], socket_errors=socket_errors,
        sample=raw["sample"], threads=threads)


# ---- Python ----------------------------------------------------------------

def _headers(workload, body):
    headers = {"Authorization": f"Bearer {workload.token}"}
    if body is not None:
        headers["Content-Type"] = "application/json"
    return headers


def _make_request(workload, rng):
    """(method, path, body bytes or None)."""
    if workload.kind == "post_order":
        skus = rng.sample(workload.skus, workload.items_per_order)
        body = json.dumps({"customer_id": rng.choice(workload.customers),
                           "items": [{"sku": sku, "quantity": rng.randint(1, 3)} for sku in skus]},
                          separators=(",", ":"))
        return "POST", f"{API}/orders", body.encode()
    if workload.kind == "get_order":
        return "GET", f"{API}/orders/{rng.choice(workload.order_ids)}", None
    return "GET", f"{API}/orders?customer_id={rng.choice(workload.customers)}", None


def retry_after_seconds(value, now=None):
    """The seconds a Retry-After header value asks for (delta-seconds, or an HTTP-date after
    `now`, a POSIX time), or None when it asks for none that can be read."""
    value = (value or "").strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None or when.tzinfo is None:  # RFC 9110's IMF-fixdate is always GMT
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def retry_wait(status, retry_after, rng=random):
    """How long a client honouring Retry-After waits after an answer (`status`, the header's
    value or None) before its next request: 0 when the answer asks for no wait. Never less
    than asked ("may be sent again after Retry-After", docs/api.md), plus up to as much again
    at random: clients refused in the same instant come back spread over a window as wide."""
    if status not in RETRY_AFTER_STATUSES:
        return 0.0
    seconds = retry_after_seconds(retry_after)
    if not seconds:
        return 0.0
    return seconds + rng.uniform(0, seconds)


def _connection_loop(host, port, workload, start_at, end_at, seed, out):
    rng = random.Random(seed)
    latencies, ok_latencies, statuses, socket_errors, sample = [], [], {}, 0, ""
    waits, waited = 0, 0.0
    conn = http.client.HTTPConnection(host, port, timeout=REQUEST_TIMEOUT_SECONDS)
    delay = start_at - time.time()
    if delay > 0:
        time.sleep(delay)
    clock_end = time.perf_counter() + (end_at - time.time())
    while True:
        method, path, body = _make_request(workload, rng)
        started = time.perf_counter()
        if started >= clock_end:
            break
        try:
            conn.request(method, path, body=body, headers=_headers(workload, body))
            response = conn.getresponse()
            text = response.read()
        except (OSError, http.client.HTTPException):
            socket_errors += 1
            conn.close()
            continue
        latencies.append(time.perf_counter() - started)
        if 200 <= response.status <= 299:
            ok_latencies.append(latencies[-1])
        else:
            key = OVERLOADED if response.status == 503 and b'"overloaded"' in text else str(response.status)
            statuses[key] = statuses.get(key, 0) + 1
            if not sample:
                sample = f"{response.status} {text[:200].decode('utf-8', 'replace')}"
        if response.will_close:
            conn.close()
        wait = retry_wait(response.status, response.getheader("Retry-After"), rng) \
            if workload.honour_retry_after else 0.0
        if wait:  # after the answer's latency was taken, before the next request's clock starts
            if time.perf_counter() + wait >= clock_end:
                break  # its next request would start past the end: it has none
            time.sleep(wait)
            waits, waited = waits + 1, waited + wait
    conn.close()
    out.append((latencies, ok_latencies, statuses, socket_errors, sample, waits, waited))


def _python_process(host, port, workload, connections, start_at, end_at, seed, queue):
    out = []
    threads = [threading.Thread(target=_connection_loop,
                                args=(host, port, workload, start_at, end_at, seed * 1000 + i, out))
               for i in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    queue.put(_merge(out))


def _merge(parts):
    """One (latencies, 2xx latencies, statuses, socket errors, first error sample, Retry-After
    waits, seconds waited) from many."""
    latencies, ok_latencies, statuses, socket_errors, sample, waits, waited = [], [], {}, 0, "", 0, 0.0
    for lat, ok_lat, st, errors, smp, n_waits, seconds in parts:
        latencies.extend(lat)
        ok_latencies.extend(ok_lat)
        for code, n in st.items():
            statuses[code] = statuses.get(code, 0) + n
        socket_errors += errors
        sample = sample or smp
        waits, waited = waits + n_waits, waited + seconds
    return latencies, ok_latencies, statuses, socket_errors, sample, waits, waited


def _run_python(base_url, workload, connections, seconds):
    parts = urlsplit(base_url)
    processes = max(1, min(connections, cpu_count()))
    shares = [connections // processes + (1 if i < connections % processes else 0) for i in range(processes)]
    # fork: the workers need nothing but this module, and start in milliseconds.
    ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    queue = ctx.Queue()
    start_at = time.time() + 0.3 + 0.05 * processes  # every process is up by then
    end_at = start_at + seconds
    workers = [ctx.Process(target=_python_process, daemon=True,
                           args=(parts.hostname, parts.port, workload, share, start_at, end_at,
                                 random.randrange(1 << 30), queue))
               for share in shares]
    for worker in workers:
        worker.start()
    results = []
    try:
        for _ in workers:
            results.append(queue.get(timeout=seconds + REQUEST_TIMEOUT_SECONDS + 60))
        # Until the last answer: a request sent before the end is waited for (wrk drops it), and
        # past a bound (512 connections at a few hundred req/s) that tail is seconds long.
        duration = max(float(seconds), time.time() - start_at)
    finally:
        for worker in workers:
            worker.join(timeout=10)
            if worker.is_alive():
                worker.kill()
    latencies, ok_latencies, statuses, socket_errors, sample, waits, waited = _merge(results)
    ms = sorted(value * 1000 for value in latencies)
    ok_ms = sorted(value * 1000 for value in ok_latencies)
    overloaded = statuses.pop(OVERLOADED, 0)
    if overloaded:  # a 503 like any other in `statuses`; which of them were `overloaded`, apart
        statuses["503"] = statuses.get("503", 0) + overloaded
    result = _summary(
        requests=len(ms), duration=duration,
        p50=_percentile(ms, 50), p90=_percentile(ms, 90), p99=_percentile(ms, 99),
        maximum=ms[-1] if ms else 0.0, mean=(sum(ms) / len(ms)) if ms else 0.0,
        non2xx=sum(statuses.values()), statuses=statuses, socket_errors=socket_errors,
        sample=sample, threads=processes)
    result.update({f"ok_p{p}_ms": round(_percentile(ok_ms, p), 2) for p in (50, 90, 99)})
    result["ok_max_ms"] = round(ok_ms[-1], 2) if ok_ms else 0.0
    result["overloaded"] = overloaded
    if workload.honour_retry_after:
        result["retry_waits"], result["waited_seconds"] = waits, round(waited, 1)
    return result


def _percentile(sorted_values, p):
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def _summary(requests, duration, p50, p90, p99, maximum, mean, non2xx, statuses, socket_errors, sample,
             threads):
    return {
        "requests": requests,
        "seconds": round(duration, 3),
        "rps": round(requests / duration, 1) if duration else 0.0,
        "p50_ms": round(p50, 2),
        "p90_ms": round(p90, 2),
        "p99_ms": round(p99, 2),
        "max_ms": round(maximum, 2),
        "mean_ms": round(mean, 2),
        "errors": non2xx + socket_errors,
        "non2xx": non2xx,
        "socket_errors": socket_errors,
        "statuses": dict(sorted(statuses.items())),
        "error_sample": sample or None,
        "loadgen_threads": threads,
    }
