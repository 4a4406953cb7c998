"""The bench's Python load generator (bench/loadgen.py) against a tiny real HTTP server.

The server (tests/servers/retry_after.py) answers its first request 503 `overloaded` with
`Retry-After: 1`, as the gateway sheds, and every later one 201, and notes when each request
arrived. A client honouring Retry-After must send nothing for at least that second (and not much
longer than the jitter allows), and the wait must be in no latency; one that does not (the
bench's default) sends its next request at once. Server and load generator run in a process of
their own, without this suite's eventlet (its green threads and the generator's forked workers
do not mix), as the bench runs them.
"""
import json
import random
import subprocess
import sys
import time
from email.utils import formatdate

import pytest

from bench import loadgen
from tests import support

RETRY_AFTER = 1
SECONDS = 3
IN_30_SECONDS = "an HTTP-date 30 s from now"


def _drive(seconds, honour):
    """(load generator result, arrival times) of tests/servers/retry_after.py's run."""
    args = [sys.executable, "-m", "tests.servers.retry_after", "--seconds", str(seconds),
            "--retry-after", str(RETRY_AFTER), *(["--honour"] if honour else [])]
    out = subprocess.run(args, check=False, cwd=support.ROOT, capture_output=True, text=True, timeout=seconds + 60)
    assert out.returncode == 0, out.stderr[-2000:]
    ran = json.loads(out.stdout.strip().splitlines()[-1])
    return ran["result"], ran["arrivals"]


def test_a_client_honouring_retry_after_waits_before_its_next_request():
    result, arrivals = _drive(SECONDS, honour=True)

    assert len(arrivals) > 2, arrivals
    gap = arrivals[1] - arrivals[0]
    assert RETRY_AFTER <= gap < 2 * RETRY_AFTER + 0.5, gap  # the header's second, plus jitter up to as much
    assert result["overloaded"] == 1 and result["statuses"] == {"503": 1}, result
    assert result["retry_waits"] == 1 and RETRY_AFTER <= result["waited_seconds"] <= 2 * RETRY_AFTER, result
    # The wait is idle time, not latency: no answer took anywhere near the second.
    assert result["max_ms"] < 500 and result["ok_max_ms"] < 500, result
    assert result["requests"] == len(arrivals)
    assert result["seconds"] < SECONDS + 1, result  # no wait runs on past the measured seconds


def test_a_client_ignoring_retry_after_sends_again_at_once():
    result, arrivals = _drive(SECONDS, honour=False)

    assert arrivals[1] - arrivals[0] < 0.5, arrivals[:2]
    assert result["overloaded"] == 1 and "retry_waits" not in result, result


def test_a_wait_that_would_end_past_the_measured_seconds_ends_the_load():
    result, arrivals = _drive(1, honour=True)

    assert len(arrivals) == 1, arrivals  # the wait (at least 1 s) would end after the 1 s of load
    assert result["retry_waits"] == 0 and result["seconds"] < 1.5, result


@pytest.mark.parametrize("status, header, low, high", [
    (503, "1", 1, 2), (429, "3", 3, 6), (503, None, 0, 0), (503, "0", 0, 0), (200, "1", 0, 0),
    (503, "soon", 0, 0), (503, IN_30_SECONDS, 28, 62),
])
def test_the_wait_is_at_least_what_retry_after_asks_and_at_most_twice_that(status, header, low, high):
    if header == IN_30_SECONDS:  # an HTTP-date, made when the test runs (collection is earlier)
        header = formatdate(time.time() + 30, usegmt=True)
    waits = [loadgen.retry_wait(status, header, random.Random(seed)) for seed in range(50)]
    assert all(low <= wait <= high for wait in waits), waits
    assert high == 0 or max(waits) - min(waits) > (high - low) / 4  # jittered, not one instant


def test_wrk_cannot_honour_retry_after():
    workload = loadgen.Workload(kind="post_order", token="t", customers=["c1"], skus=["a", "b"],
                                honour_retry_after=True)
    with pytest.raises(ValueError, match="Retry-After"):
        loadgen.run("wrk", "http://127.0.0.1:9", workload, connections=1, seconds=1)
