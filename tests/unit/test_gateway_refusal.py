"""The answer to a shed request (gateway/edge/refusal.py) next to the app's own for the same request.

The app here is a bare Flask app with the gateway's error handlers and CORS set up by the gateway's
own code, and a hook that refuses every request as the app did before refusals skipped it: what
the refusal answers must be what that app answers (status, body, Retry-After, CORS headers), plus
the request id.
"""
import re
from concurrent import futures

import pytest
from flask import Flask
from prometheus_client import REGISTRY
from werkzeug.test import EnvironBuilder, run_wsgi_app

from common.contract.errors import Overloaded
from common.contract.settings import load_settings
from gateway import metrics
from gateway.app import _configure_edge
from gateway.edge import refusal, shedding
from gateway.errors import register_error_handlers

ORIGINS = "https://shop.example,http://localhost:3000"
MAX_IN_FLIGHT = 7
CORS_NAMES = re.compile(r"^(access-control-.*|vary)$", re.IGNORECASE)


def _app(cors_origins):
    app = Flask(__name__)
    settings = load_settings({"CORS_ORIGINS": cors_origins} if cors_origins else {})
    cors = _configure_edge(app, settings)
    register_error_handlers(app)

    @app.before_request
    def refuse():  # the app's answer to a shed request, before the refusal took its place
        raise Overloaded(refusal.MESSAGE, {"max_in_flight": MAX_IN_FLIGHT,
                                           "retry_after_seconds": shedding.RETRY_AFTER_SECONDS})

    @app.post("/api/v1/orders")
    def create_order():
        raise AssertionError("refused before")

    return app, refusal.Refusal(app, MAX_IN_FLIGHT, cors)


def _cors(headers):
    return sorted((name.lower(), value) for name, value in headers if CORS_NAMES.match(name))


REQUESTS = [
    ("POST", {"Origin": "https://shop.example"}),
    ("POST", {"Origin": "http://localhost:3000", "X-Request-ID": "abc-123"}),
    ("POST", {"Origin": "https://evil.example"}),
    ("POST", {}),
    ("OPTIONS", {"Origin": "https://shop.example", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization, content-type, x-request-id"}),
    ("OPTIONS", {"Origin": "https://shop.example", "Access-Control-Request-Method": "TRACE"}),
]


@pytest.mark.parametrize("cors_origins", [ORIGINS, None])
@pytest.mark.parametrize(("method", "headers"), REQUESTS)
def test_a_refusal_answers_what_the_app_answers_plus_the_request_id(cors_origins, method, headers):
    app, refuse = _app(cors_origins)
    expected = app.test_client().open("/api/v1/orders", method=method, headers=headers, json={"x": 1})
    body, status, answer = run_wsgi_app(refuse, EnvironBuilder("/api/v1/orders", method=method, headers=headers,
                                                               json={"x": 1}).get_environ())
    assert (status, b"".join(body)) == (expected.status, expected.get_data())
    assert expected.status_code == 503 and expected.json["error"]["code"] == "overloaded"
    for name in ("Content-Type", "Content-Length", "Retry-After"):
        assert answer[name] == expected.headers[name], name
    assert _cors(answer.items()) == _cors(expected.headers.items())
    assert (cors_origins is not None and headers.get("Origin") != "https://evil.example") == any(
        name.lower() == "access-control-allow-origin" for name, _ in answer.items())
    if "X-Request-ID" in headers:
        assert answer["X-Request-ID"] == headers["X-Request-ID"]
    else:
        assert re.fullmatch(r"[0-9a-f]{32}", answer["X-Request-ID"])


def test_a_request_id_that_is_not_well_formed_is_replaced():
    _, refuse = _app(None)
    _, _, answer = run_wsgi_app(refuse, EnvironBuilder("/api/v1/orders", method="POST",
                                                       headers={"X-Request-ID": "no spaces; allowed"}).get_environ())
    assert re.fullmatch(r"[0-9a-f]{32}", answer["X-Request-ID"])


def _sample(name, **labels):
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_a_refusal_is_counted_shed_and_as_an_answer_of_its_route(monkeypatch):
    monkeypatch.setitem(metrics._state, "on", True)
    _, refuse = _app(None)
    before = (_sample("shed_requests_total"),
              _sample("http_requests_total", method="POST", route="/api/v1/orders", status="503"),
              _sample("http_requests_total", method="GET", route="unmatched", status="503"))
    for method, path in (("POST", "/api/v1/orders"), ("POST", "/api/v1/orders"), ("GET", "/nowhere")):
        run_wsgi_app(refuse, EnvironBuilder(path, method=method).get_environ())
    assert (_sample("shed_requests_total"),
            _sample("http_requests_total", method="POST", route="/api/v1/orders", status="503"),
            _sample("http_requests_total", method="GET", route="unmatched", status="503")) == (
        before[0] + 3, before[1] + 2, before[2] + 1)


def test_only_a_shedding_thread_gets_the_refusal():
    def app(environ, start_response):
        start_response("200 OK", [])
        return [b"the app"]

    def refuse(environ, start_response):
        start_response("503 SERVICE UNAVAILABLE", [])
        return [b"refused"]

    dispatch = refusal.refusing(app, refuse)

    def answer():
        return b"".join(run_wsgi_app(dispatch, EnvironBuilder("/").get_environ())[0])

    with futures.ThreadPoolExecutor(1, thread_name_prefix=shedding.SHED_THREAD_PREFIX) as shed, \
            futures.ThreadPoolExecutor(1) as serving:
        assert (shed.submit(answer).result(), serving.submit(answer).result(), answer()) == (
            b"refused", b"the app", b"the app")
