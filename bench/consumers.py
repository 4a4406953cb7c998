"""What the event consumers cost per created order: the default stack, then the same with one
webhook subscribed to `order_created`, delivered to a local subscriber that answers 204
(tests/servers/webhook_receiver.py --discard, labelled `webhook receiver`: another machine's
work, shown but not counted as ours).

Every created order is followed by work off its path: the outbox relay publishes its events,
notification_service queues and sends its email, webhook_service matches it against the webhooks
and (with one) signs and POSTs it, invoice_service hears it. On a busy machine that work falls
behind the load (those services run at a lower priority), so a case's CPU is counted from the
start of the load until that work is done (`drain`): nothing left in any outbox, no delivery or
notification due, no message in the stack's queues. The warm-up's work is done before the
measured load starts, the same way.

Both configurations run with WEBHOOK_ALLOW_HOSTS=127.0.0.1 (the subscriber is on this machine,
over http), on a freshly started stack per round, BENCH_CONSUMERS_ROUNDS rounds in the order A B
B A ...; the webhook is made through the gateway after its stack started and deleted after its
cases. The default stack also runs at one connection (its p50).
"""
import sys
import time

import requests

from bench import cases, seed
from bench.targets import NO_WEBHOOK, ONE_WEBHOOK, OURS, WEBHOOK_RECEIVER
from tests import harness

ALLOW_LOCAL = {"WEBHOOK_ALLOW_HOSTS": "127.0.0.1"}
EVENT_TYPES = ["order_created"]
DRAIN_TIMEOUT_SECONDS = 120
POLL_SECONDS = 0.5


def consumers_cases(bench):
    """POST at the main connections with no webhook and with one; with none, also at one
    connection. Then the default stack again."""
    cfg = bench.config
    if cfg.base_url:
        bench.report["consumers"] = "skipped: BENCH_BASE_URL"
        return
    port = harness.free_port()
    bench.start(WEBHOOK_RECEIVER, [sys.executable, "-m", "tests.servers.webhook_receiver", "--port", str(port),
                                   "--status", "204", "--discard"], harness.venv_env())
    url = f"http://127.0.0.1:{port}/hooks/bench"
    bench.report["consumers"] = {"rounds": cfg.consumers_rounds, "webhook": {"url": url, "event_types": EVENT_TYPES},
                                 "environment": ALLOW_LOCAL}
    print(f"\nconsumers: POST at {cfg.main_connections} connections with no webhook and with one on "
          f"{', '.join(EVENT_TYPES)} (a local subscriber answering 204); CPU per order counted until the "
          "consumers' work is done", flush=True)

    def one_round(target, name):
        if target == NO_WEBHOOK:
            return [_case(bench, name, c) for c in sorted({1, cfg.main_connections})]
        webhook_id = _subscribe(bench, url)
        try:
            case = _case(bench, name, cfg.main_connections)
            # Not due is not done: a failed attempt waits for its retry, and the drain would not see it.
            case["webhook_deliveries"] = dict(harness.query(
                bench.database_url, "SELECT status, count(*) FROM webhooks.deliveries WHERE webhook_id = %s "
                "GROUP BY status", webhook_id))
            return [case]
        finally:
            _unsubscribe(bench, webhook_id)

    try:
        cases.separate_cases(bench, [(NO_WEBHOOK, ALLOW_LOCAL), (ONE_WEBHOOK, ALLOW_LOCAL)], cfg.consumers_rounds,
                             one_round)
    except Exception as exc:  # the webhook could not be made or deleted: recorded, the other cases still tell
        bench.problems.append(f"consumers: {exc.__class__.__name__}: {exc}")
        print(f"  consumers FAILED {exc}", flush=True)
    finally:
        bench.processes[WEBHOOK_RECEIVER].stop()
    bench.restart_stack()


def _case(bench, name, connections):
    return cases.load_case(bench, cases.new_case("post_order", name, connections), bench.urls[OURS],
                           bench.workload("post_order"), bench.processes["stack"], drain=lambda: drain(bench))


def _api(bench, method, path, **kwargs):
    response = requests.request(method, f"{bench.urls[OURS]}/api/v1{path}", timeout=30,
                                headers={"Authorization": f"Bearer {bench.token}"}, **kwargs)
    if not response.ok:
        raise RuntimeError(f"{method} {path} answered {response.status_code}: {response.text[:300]}")
    return response


def _subscribe(bench, url):
    """A webhook on EVENT_TYPES to `url`, made through the gateway: its id."""
    return _api(bench, "POST", "/webhooks", json={"url": url, "event_types": EVENT_TYPES,
                                                  "description": "make bench"}).json()["id"]


def _unsubscribe(bench, webhook_id):
    _api(bench, "DELETE", f"/webhooks/{webhook_id}")


def drain(bench, timeout=DRAIN_TIMEOUT_SECONDS, database_url=None, vhost=None):
    """Wait until the stack's consumers (the default stack's, or those of `database_url` and `vhost`)
    have done all the work the load left them: nothing in the database's backlog (seed.backlog),
    then no message in the vhost's queues (asked only then: rabbitmqctl takes seconds), and still
    nothing in the database (a message handled meanwhile may have left some). (seconds waited,
    whether it was all done)."""
    database_url, vhost = database_url or bench.database_url, vhost or bench.vhost

    def idle():
        return not any(seed.backlog(database_url).values())

    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if idle() and harness.queue_messages(vhost) == 0 and idle():
            return round(time.monotonic() - started, 1), True
        time.sleep(POLL_SECONDS)
    return round(time.monotonic() - started, 1), False
