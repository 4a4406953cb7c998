"""kill -9 of webhook_service while events stream in: every event still delivered, each recorded once.

Events not yet handled are redelivered by the broker (and deduplicated by their id); deliveries
recorded but not yet sent are sent after the restart; those claimed and in flight when the process
died are due again once their lease has passed (WEBHOOK_TIMEOUT_SECONDS + a margin), and sent again:
at least once, with the same webhook-id.
"""
import json
import signal
import threading
import time
import uuid

import requests
from standardwebhooks import Webhook

from tests import support
from tests.servers.webhook_receiver import WebhookReceiver
from tests.support import wait_until


def test_kill_9_webhook_service_mid_stream_loses_no_delivery(make_fault_stack):
    stack = make_fault_stack()
    receiver = WebhookReceiver().start()
    try:
        session = requests.Session()
        session.headers.update(support.bearer())
        path = f"/hooks/{uuid.uuid4().hex}"
        receiver.hang(path, 0.3)  # attempts are in flight when the process dies
        hook = session.post(stack.base_url + "/api/v1/webhooks", json={
            "url": receiver.url(path), "event_types": ["customer_created"]}).json()
        created = []

        def stream():
            for i in range(60):
                response = session.post(stack.base_url + "/api/v1/customers", json={
                    "name": f"Hook {i}", "email": f"hook-{uuid.uuid4().hex}@example.com"})
                if response.status_code == 201:
                    created.append(response.json()["id"])
                time.sleep(0.1)

        streaming = threading.Thread(target=stream)
        streaming.start()
        receiver.wait_for(path, count=10, timeout=30)
        stack.kill("webhooks", signal.SIGKILL).wait()
        time.sleep(1.5)
        stack.start("webhooks")
        streaming.join(timeout=120)
        assert len(created) == 60

        def every_one_delivered():
            received = {json.loads(r.body)["data"]["id"] for r in receiver.requests(path)}
            [(delivered,)] = support.query(stack.db_name, "SELECT count(*) FROM webhooks.deliveries "
                                                          "WHERE webhook_id = %s AND status = 'delivered'", hook["id"])
            return set(created) <= received and delivered == len(created)
        assert wait_until(every_one_delivered, timeout=90), "a delivery was lost"
        rows = support.query(stack.db_name, "SELECT event_id, status FROM webhooks.deliveries WHERE webhook_id = %s",
                             hook["id"])
        assert len(rows) == len({event_id for event_id, _ in rows}) == len(created)  # recorded once each
        sent_twice = len(receiver.requests(path)) - len(created)
        print(f"\n[kill -9 webhook_service] events={len(created)} deliveries={len(rows)} resent={sent_twice}")
        for request in receiver.requests(path):
            Webhook(hook["secret"]).verify(request.body, dict(request.headers))
    finally:
        receiver.stop()
