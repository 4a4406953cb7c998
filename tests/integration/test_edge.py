"""The edge on the session stack: rate limits shared by two gateways through a real Redis (reached, per
caller, reset, refusals not counted, a 429 changing nothing, Redis stopped mid-run), CORS, and load
shedding under a burst; each refusal in the contract's error shape."""
import concurrent.futures
import http.client
import json
import re
import socket
import time
import uuid
from urllib.parse import urlsplit

import pytest
import requests

from common.contract.caller import issue_token
from tests import support
from tests.servers.redis import RedisServer, redis_server_or_skip

pytestmark = pytest.mark.integration

LIMIT, WINDOW = 5, 3
ORIGIN = "https://shop.example"
CORS_REQUEST_HEADERS = ["Authorization", "Content-Type", "Idempotency-Key", "If-Match", "X-API-Key", "X-Request-ID"]
CORS_EXPOSED_HEADERS = ["ETag", "Location", "X-Request-ID", "Retry-After", "RateLimit-Limit", "RateLimit-Remaining",
                        "RateLimit-Reset"]


@pytest.fixture(scope="module")
def redis_server():
    server = RedisServer(redis_server_or_skip(), log_path=support.OUTPUT / "redis.log").start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def limited(stack, redis_server):
    """Two gateways on the session stack sharing RATE_LIMIT's counters in Redis; CORS for ORIGIN."""
    env = {**stack.env, "RATE_LIMIT": f"{LIMIT} per {WINDOW} seconds", "REDIS_URL": redis_server.url,
           "CORS_ORIGINS": f"{ORIGIN},http://localhost:3000"}
    with support.Gateway(env, support.OUTPUT / "gateway-limited-a.log") as first, \
            support.Gateway(env, support.OUTPUT / "gateway-limited-b.log") as second:
        yield first, second


def _caller(role="admin", customer_id=None):
    """Headers of a caller of its own (a fresh `sub`), so each test has a budget of its own."""
    sub = f"edge-test-{uuid.uuid4().hex[:8]}"
    return {"Authorization": f"Bearer {issue_token(support.JWT_SECRET, sub, role, customer_id)}"}


def _get(gateway, headers, path="/api/v1/products?limit=1"):
    return requests.get(gateway.base_url + path, headers=headers, timeout=30)


def _assert_error(response, status, code):
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and body["error"]["code"] == code, body
    assert set(body["error"]) == {"code", "message", "details"}
    return body["error"]


def _use_up(gateways, headers):
    """LIMIT answers for `headers`, alternating between `gateways`: each 200, the budget counting down."""
    for used in range(1, LIMIT + 1):
        response = _get(gateways[used % len(gateways)], headers)
        assert response.status_code == 200, response.text
        assert response.headers["RateLimit-Limit"] == str(LIMIT)
        assert response.headers["RateLimit-Remaining"] == str(LIMIT - used)
        assert 0 <= int(response.headers["RateLimit-Reset"]) <= WINDOW


def _assert_limited(response):
    error = _assert_error(response, 429, "rate_limited")
    assert 1 <= int(response.headers["Retry-After"]) <= WINDOW
    assert error["details"]["retry_after_seconds"] == int(response.headers["Retry-After"])
    assert response.headers["RateLimit-Remaining"] == "0"
    return int(response.headers["Retry-After"])


def test_one_budget_per_caller_across_two_gateways(limited):
    alice, bob = _caller(), _caller()
    _use_up(limited, alice)
    _assert_limited(_get(limited[0], alice))
    _assert_limited(_get(limited[1], alice))
    response = _get(limited[0], bob)
    assert response.status_code == 200 and response.headers["RateLimit-Remaining"] == str(LIMIT - 1)


def test_refusals_are_not_counted_and_the_budget_comes_back(limited):
    carol = _caller()
    _use_up(limited, carol)
    retry_after = max(_assert_limited(_get(limited[0], carol)) for _ in range(10))
    time.sleep(retry_after + 0.3)
    # Had the ten refusals counted, the window would still be full of them.
    assert _get(limited[1], carol).status_code == 200


def test_a_429_changes_nothing_and_leaves_the_idempotency_key_unused(api, limited, db_name):
    customer, product = api.create_customer(), api.create_product(stock=3)
    dave = _caller()
    _use_up(limited, dave)
    key = f"edge-{uuid.uuid4().hex}"
    order = {"customer_id": customer["id"], "items": [{"sku": product["sku"], "quantity": 1}]}
    refused = requests.post(limited[0].base_url + "/api/v1/orders", json=order, timeout=30,
                            headers={**dave, "Idempotency-Key": key})
    retry_after = _assert_limited(refused)
    assert support.query(db_name, "SELECT 1 FROM orders.idempotency_keys WHERE key = %s", key) == []
    assert api.product(product["sku"])["reserved"] == 0
    time.sleep(retry_after + 0.3)
    created = requests.post(limited[1].base_url + "/api/v1/orders", json=order, timeout=30,
                            headers={**dave, "Idempotency-Key": key})
    assert created.status_code == 201, created.text  # a fresh attempt, not the refusal again
    again = requests.post(limited[0].base_url + "/api/v1/orders", json=order, timeout=30,
                          headers={**dave, "Idempotency-Key": key})
    assert again.status_code in (201, 429)
    if again.status_code == 201:
        assert again.json()["id"] == created.json()["id"]


def test_an_unverified_token_never_spends_the_budget_of_the_sub_it_names(limited):
    erin_sub = f"edge-test-{uuid.uuid4().hex[:8]}"
    forged = {"Authorization": f"Bearer {issue_token('not-the-secret', erin_sub, 'admin')}"}
    for _ in range(LIMIT + 2):
        assert _get(limited[0], forged).status_code in (401, 429)  # limited by address, never as erin
    erin = {"Authorization": f"Bearer {issue_token(support.JWT_SECRET, erin_sub, 'admin')}"}
    response = _get(limited[1], erin)
    assert response.status_code == 200 and response.headers["RateLimit-Remaining"] == str(LIMIT - 1)


def test_probes_and_scrapes_are_not_limited(limited):
    for _ in range(LIMIT * 3):
        for path in ("/health", "/metrics"):
            response = requests.get(limited[0].base_url + path, timeout=30)
            assert response.status_code == 200 and "RateLimit-Limit" not in response.headers


def test_cors_preflight_allows_the_contracts_methods_and_headers_for_an_allowed_origin(limited):
    response = requests.options(limited[0].base_url + "/api/v1/orders", timeout=30, headers={
        "Origin": ORIGIN, "Access-Control-Request-Method": "PUT",
        "Access-Control-Request-Headers": ", ".join(CORS_REQUEST_HEADERS).lower()})
    assert response.status_code == 200, response.text
    assert response.headers["Access-Control-Allow-Origin"] == ORIGIN
    methods = {m.strip() for m in response.headers["Access-Control-Allow-Methods"].split(",")}
    assert {"GET", "POST", "PUT", "PATCH", "DELETE"} <= methods
    allowed = {h.strip().lower() for h in response.headers["Access-Control-Allow-Headers"].split(",")}
    assert {h.lower() for h in CORS_REQUEST_HEADERS} <= allowed


def test_cors_headers_are_on_answers_and_errors_for_an_allowed_origin(limited):
    origin = {"Origin": ORIGIN}
    for response in (_get(limited[0], {**origin, **_caller()}),  # 200
                     _get(limited[0], {**origin, "Authorization": "Bearer nope"}),  # 401
                     _get(limited[1], {**origin, **_caller()}, "/api/v1/orders/not-an-id")):  # 404
        assert response.headers.get("Access-Control-Allow-Origin") == ORIGIN, response.status_code
        exposed = {h.strip().lower() for h in response.headers["Access-Control-Expose-Headers"].split(",")}
        assert {h.lower() for h in CORS_EXPOSED_HEADERS} <= exposed


def test_other_origins_and_an_unconfigured_gateway_get_no_cors_headers(limited, stack):
    preflight = {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    for response in (requests.options(limited[0].base_url + "/api/v1/orders", headers=preflight, timeout=30),
                     _get(limited[0], {"Origin": "https://evil.example", **_caller()}),
                     _get(stack, {"Origin": ORIGIN, **support.bearer("admin")})):
        assert not any(name.lower().startswith("access-control-") for name in response.headers), response.headers


def test_redis_stopped_mid_run_fails_open_then_limits_again(limited, redis_server):
    frank = _caller()
    redis_server.stop()
    try:
        for _ in range(LIMIT + 3):
            response = _get(limited[0], frank)
            assert response.status_code == 200 and "RateLimit-Limit" not in response.headers
        metrics = requests.get(limited[0].base_url + "/metrics", timeout=30).text
        assert _metric(metrics, "rate_limit_unchecked_total") >= LIMIT + 3
        assert "rate limits unchecked" in (support.OUTPUT / "gateway-limited-a.log").read_text()
    finally:
        redis_server.start()
    time.sleep(1.5)  # the gateway tries Redis again a second after it failed
    _use_up(limited[:1], frank)
    _assert_limited(_get(limited[0], frank))
    assert _metric(requests.get(limited[0].base_url + "/metrics", timeout=30).text, "rate_limited_requests_total") >= 1


@pytest.fixture(scope="module")
def narrow(stack):
    """A gateway on the session stack that holds at most two requests at once; CORS for ORIGIN."""
    with support.Gateway({**stack.env, "GATEWAY_MAX_IN_FLIGHT": "2", "GATEWAY_THREADS": "4", "CORS_ORIGINS": ORIGIN},
                         support.OUTPUT / "gateway-narrow.log") as gateway:
        yield gateway


def test_a_burst_past_the_bound_is_shed_at_once_and_nothing_is_done(narrow, db_name):
    def create(email):
        started = time.monotonic()
        response = requests.post(narrow.base_url + "/api/v1/customers", headers=support.bearer("admin"),
                                 json={"name": "Burst", "email": email}, timeout=30)
        return email, response, time.monotonic() - started

    emails = [f"burst-{uuid.uuid4().hex[:10]}@example.com" for _ in range(40)]
    with concurrent.futures.ThreadPoolExecutor(max_workers=40) as pool:
        answers = list(pool.map(create, emails))
    shed = [(email, response, seconds) for email, response, seconds in answers if response.status_code == 503]
    assert shed and any(response.status_code == 201 for _, response, _ in answers)
    assert {response.status_code for _, response, _ in answers} <= {201, 503}
    for email, response, _ in shed:
        error = _assert_error(response, 503, "overloaded")
        assert response.headers["Retry-After"] == "1" and error["details"]["max_in_flight"] == 2
        assert support.query(db_name, "SELECT 1 FROM customers.customers WHERE email = %s", email) == []
    metrics = requests.get(narrow.base_url + "/metrics", timeout=30).text
    assert _metric(metrics, "shed_requests_total") >= len(shed)


def test_a_shed_order_leaves_its_idempotency_key_unused(api, narrow):
    customer, product = api.create_customer(), api.create_product(stock=100)
    body = {"customer_id": customer["id"], "items": [{"sku": product["sku"], "quantity": 1}]}

    def create(key):
        return key, requests.post(narrow.base_url + "/api/v1/orders", json=body, timeout=30,
                                  headers={**support.bearer("admin"), "Idempotency-Key": key})

    keys = [f"shed-{uuid.uuid4().hex}" for _ in range(30)]
    with concurrent.futures.ThreadPoolExecutor(max_workers=30) as pool:
        answers = list(pool.map(create, keys))
    shed = [key for key, response in answers if response.status_code == 503]
    assert shed, "nothing was shed"
    for key in shed[:5]:
        again = api.post("/api/v1/orders", json=body, headers={"Idempotency-Key": key})
        assert again.status_code == 201, again.text


def _assert_shed(response, data, request_id=None):
    assert response.status == 503, data
    error = json.loads(data)["error"]
    assert (error["code"], error["details"]) == ("overloaded", {"max_in_flight": 2, "retry_after_seconds": 1})
    assert response.getheader("Retry-After") == "1" and response.getheader("Content-Type") == "application/json"
    assert response.getheader("Access-Control-Allow-Origin") == ORIGIN
    exposed = {h.strip().lower() for h in response.getheader("Access-Control-Expose-Headers").split(",")}
    assert {h.lower() for h in CORS_EXPOSED_HEADERS} <= exposed
    if request_id is None:
        assert re.fullmatch(r"[0-9a-f]{32}", response.getheader("X-Request-ID"))
    else:
        assert response.getheader("X-Request-ID") == request_id
    assert not response.will_close


def _fill_the_bound(host, port):
    """Two connections each holding a request in flight (half-sent: the worker waits for the rest),
    and a kept-alive connection whose first request was shed. Tried again when that request is not
    shed: a connection that arrives while the gateway still finishes what the tests before left
    (the connections they closed) is shed itself and holds nothing."""
    for _ in range(10):
        time.sleep(0.5)
        holders = [socket.create_connection((host, port), timeout=30) for _ in range(2)]
        for holder in holders:
            holder.sendall(b"GET /health/live HTTP/1.1\r\nHost: test\r\n")
        connection = http.client.HTTPConnection(host, port, timeout=5)
        try:
            connection.request("GET", "/health/live", headers={"Origin": ORIGIN})
            response = connection.getresponse()
            data = response.read()
            if response.status == 503:
                _assert_shed(response, data)
                connection.sock.settimeout(30)
                return holders, connection
        except (OSError, http.client.HTTPException):
            pass
        for held in (*holders, connection):
            held.close()
    pytest.fail("two half-sent requests never filled GATEWAY_MAX_IN_FLIGHT")


def test_a_shed_answer_has_every_header_and_keeps_its_connection(narrow):
    """With the bound full, requests with a body on one kept-alive connection are shed with the
    contract's answer (each body drained: the next request parses); once the requests in flight
    are gone, the same connection is served by the app."""
    holders, connection = _fill_the_bound(urlsplit(narrow.base_url).hostname, urlsplit(narrow.base_url).port)
    first = connection.sock
    body = json.dumps({"name": "Shed", "email": f"shed-{uuid.uuid4().hex[:10]}@example.com"})
    headers = {**support.bearer("admin"), "Content-Type": "application/json", "Origin": ORIGIN}
    try:
        for request_id in ("shed-1", None):
            connection.request("POST", "/api/v1/customers", body=body,
                               headers={**headers, "X-Request-ID": request_id} if request_id else headers)
            response = connection.getresponse()
            _assert_shed(response, response.read(), request_id)
            assert connection.sock is first, "the connection was closed"
    finally:
        for holder in holders:
            holder.close()
    deadline = time.monotonic() + 10
    while True:  # the worker hears of the closed holders on its own loop: soon, not at once
        connection.request("GET", "/health/live", headers={"Origin": ORIGIN})
        response = connection.getresponse()
        data = response.read()
        assert connection.sock is first, "the connection was closed"
        if response.status == 200 or time.monotonic() > deadline:
            break
        _assert_shed(response, data)
    assert (response.status, json.loads(data)) == (200, {"status": "ok"})
    assert response.getheader("Access-Control-Allow-Origin") == ORIGIN
    connection.close()


def _metric(text, name):
    """The sum of every sample of `name` in a Prometheus exposition."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + " ") or line.startswith(name + "{"))
