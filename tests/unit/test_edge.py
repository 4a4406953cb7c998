"""The edge's rules without processes: circuit breakers, the shedding worker's count, the API key cache,
the settings they read, and the gunicorn internals the worker builds on."""
import inspect
import subprocess
import sys
from types import SimpleNamespace

import pytest

from common.contract.caller import api_key_digest, new_api_key
from common.contract.errors import NotFound, ServiceUnavailable, Unauthenticated, UpstreamTimeout
from common.contract.settings import SettingsError, load_settings
from gateway.edge import breakers, shedding
from gateway.edge.api_keys import ApiKeyCache
from gateway.rpc_pool import NoAnswer
from tests import support


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def _fail(breaker, exc):
    with pytest.raises(type(exc)), breaker.guard():
        raise exc


def test_consecutive_failures_open_the_circuit_and_an_answer_resets_the_count():
    clock = Clock()
    breaker = breakers.Breaker("invoice_service", failures=3, reset_seconds=10, clock=clock)
    _fail(breaker, NoAnswer("no reply"))
    _fail(breaker, ServiceUnavailable("not running", {"service": "invoice_service"}))
    _fail(breaker, NotFound("no such invoice"))  # the service answered: the count starts again
    _fail(breaker, NoAnswer("no reply"))
    _fail(breaker, NoAnswer("no reply"))
    assert breaker.state == breakers.CLOSED
    _fail(breaker, NoAnswer("no reply"))
    assert breaker.state == breakers.OPEN
    with pytest.raises(ServiceUnavailable) as refused:
        breaker.before_call()
    assert refused.value.details == {"service": "invoice_service", "circuit": "open", "retry_after_seconds": 10}


def test_after_the_reset_period_one_probe_decides():
    clock = Clock()
    breaker = breakers.Breaker("invoice_service", failures=1, reset_seconds=5, clock=clock)
    _fail(breaker, NoAnswer("no reply"))
    clock.now += 5
    probe = breaker.guard()
    probe.__enter__()  # the probe is out ...
    with pytest.raises(ServiceUnavailable) as refused:
        breaker.before_call()  # ... and every other call still refused
    assert refused.value.details["retry_after_seconds"] == breakers.PROBE_RETRY_SECONDS
    probe.__exit__(NoAnswer, NoAnswer("no reply"), None)  # it failed: open for another period
    assert breaker.state == breakers.OPEN
    clock.now += 5
    with breaker.guard():
        pass  # this probe succeeded
    assert breaker.state == breakers.CLOSED


def test_what_counts_as_a_failure_of_a_service():
    assert breakers.verdict("s", NoAnswer("x")) is False
    assert breakers.verdict("s", ServiceUnavailable("down", {"database": "unreachable"})) is False
    assert breakers.verdict("s", ServiceUnavailable("not running", {"service": "s"})) is False
    assert breakers.verdict("s", ServiceUnavailable("its callee", {"service": "other"})) is True
    assert breakers.verdict("s", UpstreamTimeout("its callee timed out", {"service": "other"})) is True
    assert breakers.verdict("s", ServiceUnavailable("broker", {"broker": "unreachable"})) is None
    assert breakers.verdict("s", ServiceUnavailable("pool", {"rpc_pool": "exhausted"})) is None


def test_a_probe_that_tells_nothing_passes_its_turn_on():
    clock = Clock()
    breaker = breakers.Breaker("s", failures=1, reset_seconds=5, clock=clock)
    _fail(breaker, NoAnswer("x"))
    clock.now += 5
    _fail(breaker, ServiceUnavailable("broker", {"broker": "unreachable"}))
    with breaker.guard():  # the next call probes at once
        pass
    assert breaker.state == breakers.CLOSED


class _Pool:
    def __init__(self):
        self.submitted = []

    def submit(self, fn, conn):
        future = SimpleNamespace(callbacks=[], add_done_callback=lambda cb: future.callbacks.append(cb))
        self.submitted.append((conn, future))
        return future


def test_the_worker_sheds_past_its_bound_and_counts_only_what_it_holds():
    worker = shedding.SheddingThreadWorker.__new__(shedding.SheddingThreadWorker)
    worker.max_in_flight, worker.in_flight = 2, 0
    worker.tpool, worker.shed_pool = _Pool(), _Pool()
    deferred, finished = [], []
    worker.method_queue = SimpleNamespace(defer=lambda fn, *args: deferred.append((fn, args)))
    worker.finish_request = lambda conn, fut: finished.append(conn)
    for conn in ("a", "b", "c"):
        worker.enqueue_req(conn)
    assert [c for c, _ in worker.tpool.submitted] == ["a", "b"] and [c for c, _ in worker.shed_pool.submitted] == ["c"]
    assert worker.in_flight == 2
    for conn, future in worker.tpool.submitted + worker.shed_pool.submitted:
        future.callbacks[0](future)
    for fn, args in deferred:
        fn(*args)
    assert worker.in_flight == 0 and finished == ["a", "b", "c"]


def test_gunicorn_s_thread_worker_has_the_hooks_the_shedding_worker_overrides():
    from gunicorn.workers.gthread import ThreadWorker

    assert inspect.signature(ThreadWorker.enqueue_req).parameters.keys() == {"self", "conn"}
    assert "self.tpool = self.get_thread_pool()" in inspect.getsource(ThreadWorker.init_process)
    assert "self.enqueue_req(conn)" in inspect.getsource(ThreadWorker.finish_request)
    assert "self.method_queue.defer(self.finish_request, conn, fut)" in inspect.getsource(ThreadWorker.enqueue_req)


def test_gunicorn_runs_the_app_on_the_request_s_thread_and_drains_what_it_left_unread():
    """The refusal (gateway/edge/refusal.py) knows a shed request by its thread, and never reads a body."""
    from gunicorn.workers.gthread import ThreadWorker

    assert "self.handle_request(req, conn)" in inspect.getsource(ThreadWorker.handle)
    assert "respiter = self.wsgi(environ, resp.start_response)" in inspect.getsource(ThreadWorker.handle_request)
    assert "return self._keepalive_after(conn, self.handle_request(req, conn))" in inspect.getsource(
        ThreadWorker.handle)
    assert "conn.parser.finish_body(deadline=" in inspect.getsource(ThreadWorker._keepalive_after)


def test_gunicorn_s_config_leaves_prometheus_client_to_the_workers():
    """gateway/gunicorn_conf.py sets PROMETHEUS_MULTIPROC_DIR for the workers it forks: had a module it
    imports (gateway/edge/shedding.py among them) imported prometheus-client first, each worker would
    count for itself and GET /metrics show one worker's counts."""
    script = ("import runpy, sys; conf = runpy.run_path('gateway/gunicorn_conf.py'); "
              "loaded = sorted(name for name in sys.modules if name.startswith('prometheus_client')); "
              "conf['on_exit'](None); print(loaded)")
    out = subprocess.run([sys.executable, "-c", script], cwd=support.ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_api_keys_are_asked_about_once_per_period_unknown_ones_too():
    asked = []
    known = new_api_key()

    def verify(prefix, digest, caller):
        asked.append(digest)
        if digest != api_key_digest(known):
            raise Unauthenticated("no", {})
        return {"id": "k1", "role": "customer", "customer_id": "c1"}

    clock = Clock()
    cache = ApiKeyCache(5, verify)
    import gateway.edge.api_keys as module

    module.time = SimpleNamespace(monotonic=clock)
    try:
        caller = cache.caller_for(known)
        assert (caller.sub, caller.role, caller.customer_id) == ("api-key:k1", "customer", "c1")
        assert cache.caller_for(known) == caller and len(asked) == 1
        for _ in range(2):
            with pytest.raises(Unauthenticated):
                cache.caller_for("oms_unknown")
        assert len(asked) == 2
        clock.now += 5
        cache.caller_for(known)
        assert len(asked) == 3
        cache.forget("k1")
        cache.caller_for(known)
        assert len(asked) == 4
        with pytest.raises(Unauthenticated):
            cache.caller_for("not-ours")  # no prefix: refused without asking
        assert len(asked) == 4
    finally:
        module.time = __import__("time")


def test_a_key_is_its_prefix_and_256_random_bits_and_only_its_digest_is_kept():
    key = new_api_key()
    assert key.startswith("oms_") and len(key) == 4 + 43 and new_api_key() != key
    assert api_key_digest(key) != key and len(api_key_digest(key)) == 64


@pytest.mark.parametrize("environ, named", [
    ({"RATE_LIMIT": "600/minute"}, "RATE_LIMIT needs REDIS_URL"),
    ({"RATE_LIMIT": "lots", "REDIS_URL": "redis://h"}, "RATE_LIMIT: must be one limit"),
    ({"RATE_LIMIT": "5/second;100/minute", "REDIS_URL": "redis://h"}, "RATE_LIMIT: must be one limit"),
    ({"REDIS_URL": "http://h"}, "REDIS_URL:"),
    ({"CORS_ORIGINS": "shop.example"}, "CORS_ORIGINS: origins are scheme://host"),
    ({"GATEWAY_MAX_IN_FLIGHT": "0"}, "GATEWAY_MAX_IN_FLIGHT:"),
    ({"BREAKER_FAILURES": "0"}, "BREAKER_FAILURES:"),
    ({"API_KEY_CACHE_SECONDS": "0"}, "API_KEY_CACHE_SECONDS:"),
])
def test_bad_edge_settings_are_refused_naming_the_variable(environ, named):
    with pytest.raises(SettingsError) as error:
        load_settings(environ)
    assert named in str(error.value)


def test_edge_settings_defaults_and_lists():
    settings = load_settings({})
    assert settings.rate_limit is None and settings.cors_origins == () and settings.gateway_max_in_flight == 192
    settings = load_settings({"CORS_ORIGINS": " https://shop.example/, http://localhost:3000 ",
                              "RATE_LIMIT": "10 per second", "REDIS_URL": "redis://127.0.0.1:6379/0"})
    assert settings.cors_origins == ("https://shop.example", "http://localhost:3000")
