"""Webhook rules (webhook_service/domain.py), one attempt's HTTP (outbound.py) against a local server, and, on
the in-memory store, the prune timer and when the service binds and unbinds what reaches it (bindings.py)."""
import base64
import json
import subprocess
import sys
import uuid
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pytest
from nameko.testing.services import worker_factory
from standardwebhooks import Webhook

from common.contract.caller import ADMIN, Caller
from common.contract.errors import InvalidTransition, ServiceUnavailable, ValidationFailed
from common.kit import db
from tests.harness import ROOT
from tests.servers.webhook_receiver import WebhookReceiver
from tests.unit.fakes import SETTINGS, FakeUnitOfWork, InMemoryWebhookStore
from webhook_service import domain, outbound, secret_box
from webhook_service import service as service_module

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)
SECRET = domain.new_secret(bytes(range(32)))


def test_a_secret_is_whsec_and_base64_of_its_bytes():
    assert SECRET.startswith("whsec_") and base64.b64decode(SECRET[6:]) == bytes(range(32))
    with pytest.raises(ValueError):
        domain.new_secret(b"short")


def test_secrets_at_rest_decrypt_with_any_of_the_keys():
    old, new = "ZGV2LW9ubHktaW5zZWN1cmUtd2ViaG9vay1rZXktMzI=", base64.urlsafe_b64encode(b"n" * 32).decode()
    token = secret_box.encrypt(old, SECRET)
    assert SECRET not in token
    assert secret_box.decrypt(f"{new},{old}", token) == SECRET


@pytest.mark.parametrize("url, allow, fragment", [
    ("ftp://hooks.example/in", (), "https"),
    ("file:///etc/passwd", (), "https"),
    ("http://hooks.example/in", (), "WEBHOOK_ALLOW_HOSTS"),
    ("https:///in", (), "host"),
    ("https://user:pw@hooks.example/in", (), "password"),
    ("https://hooks.example:99999/in", (), "Not a URL"),
    ("hooks.example/in", (), "https"),
    ("https://hooks.example:0/in", (), "Port 0"),
    ("https://" + "a" * 254 + "/in", (), "host"),
    ("https://[::1/in", (), "Not a URL"),
])
def test_urls_against_the_rules_are_refused_naming_url(url, allow, fragment):
    with pytest.raises(ValidationFailed) as refused:
        domain.check_url(url, allow)
    assert list(refused.value.details) == ["url"] and fragment in refused.value.details["url"][0]


def test_https_anywhere_and_http_to_allowed_hosts():
    assert domain.check_url("https://Hooks.Example./in", ()) == domain.Target("https", "hooks.example", 443)
    assert domain.check_url("http://127.0.0.1:8080/in", ("127.0.0.1",)) == domain.Target("http", "127.0.0.1", 8080)
    assert domain.check_url("http://[::1]/in", ("::1",)).host == "::1"


@pytest.mark.parametrize("address", [
    "127.0.0.1", "127.8.8.8", "::1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "169.254.1.1",
    "fe80::1", "fe80::1%eth0", "fc00::1", "fd00:ec2::254", "224.0.0.1", "ff02::1", "0.0.0.0", "::", "240.0.0.1",
    "100.64.0.1", "100.100.100.200", "::ffff:127.0.0.1", "::ffff:10.0.0.1", "192.0.2.1", "255.255.255.255",
])
def test_only_public_unicast_addresses_are_reachable(address):
    assert domain.refused_address(address) is not None


@pytest.mark.parametrize("address", ["93.184.215.14", "8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses_are(address):
    assert domain.refused_address(address) is None


def test_one_inward_address_refuses_the_host_unless_it_is_allowed():
    target = domain.Target("https", "rebind.example", 443)
    with pytest.raises(ValidationFailed) as refused:
        domain.check_addresses(target, ["8.8.8.8", "10.0.0.7"], ())
    assert "10.0.0.7" in refused.value.details["url"][0]
    assert domain.check_addresses(target, ["10.0.0.7"], ("rebind.example",)) == ["10.0.0.7"]
    with pytest.raises(ValidationFailed):
        domain.check_addresses(target, [], ("rebind.example",))


def test_localhost_resolves_inward_and_is_refused():
    with pytest.raises(ValidationFailed) as refused:
        outbound.checked_target("https://localhost/in", (), 2)
    assert "loopback" in refused.value.details["url"][0]


def test_retries_double_from_the_base_with_jitter():
    assert [domain.retry_delay(n, 10, 0.5) for n in (1, 2, 3, 4)] == [10, 20, 40, 80]
    assert domain.retry_delay(3, 10, 0.0) == pytest.approx(32) and domain.retry_delay(3, 10, 0.999) < 48


def _delivery(attempts=0, before_resend=0):
    return SimpleNamespace(attempts=attempts, attempts_before_resend=before_resend)


def test_an_attempt_delivers_on_2xx_and_is_retried_otherwise_until_the_last():
    delivered = domain.after_attempt(_delivery(2), domain.Outcome(204), NOW, 10, 5, 0.5)
    assert (delivered.status, delivered.attempts, delivered.delivered_at) == ("delivered", 3, NOW)
    retried = domain.after_attempt(_delivery(1), domain.Outcome(302), NOW, 10, 5, 0.5)
    assert (retried.status, retried.last_status_code, retried.last_error) == ("pending", 302, "HTTP 302")
    assert retried.next_attempt_at == NOW + timedelta(seconds=20)
    failed = domain.after_attempt(_delivery(4), domain.Outcome(None, "timed out"), NOW, 10, 5, 0.5)
    assert (failed.status, failed.attempts, failed.next_attempt_at) == ("failed", 5, None)
    # A re-send is a new round: its attempts count from where it was re-sent.
    again = domain.after_attempt(_delivery(5, before_resend=5), domain.Outcome(500), NOW, 10, 5, 0.5)
    assert (again.status, again.attempts) == ("pending", 6)


def test_a_webhook_is_disabled_after_failing_for_the_hours():
    assert not domain.should_disable(None, NOW, 72)
    assert not domain.should_disable(NOW - timedelta(hours=71), NOW, 72)
    assert domain.should_disable(NOW - timedelta(hours=72), NOW, 72)
    with pytest.raises(InvalidTransition):
        domain.check_can_resend(SimpleNamespace(id="x", enabled=False))


@pytest.fixture
def receiver():
    server = WebhookReceiver().start()
    yield server
    server.stop()


def test_a_delivery_is_signed_as_standard_webhooks_verify(receiver):
    body = json.dumps({"event_id": "e-1", "type": "order_created", "data": {"id": 1}})
    url = receiver.url("/signed")
    outcome = outbound.deliver(url, ("127.0.0.1",), "e-1", body, SECRET, datetime.now(timezone.utc), 2)
    assert outcome == domain.Outcome(200)
    [request] = receiver.requests("/signed")
    assert request.headers["Content-Type"] == "application/json" and request.headers["webhook-id"] == "e-1"
    assert Webhook(SECRET).verify(request.body, dict(request.headers)) == json.loads(body)


def test_the_connection_goes_to_the_checked_address_and_names_the_host(receiver):
    url = f"http://hooks.invalid:{receiver.port}/pinned"  # resolves nowhere: only the pinned address reaches it
    status, _ = outbound.post(url, "127.0.0.1", {"Content-Type": "application/json"}, "{}", 2)
    assert status == 200
    assert receiver.requests("/pinned")[0].headers["Host"] == f"hooks.invalid:{receiver.port}"


def test_redirects_are_failed_attempts_and_errors_say_what_happened(receiver):
    receiver.respond("/moved", 302)
    outcome = outbound.deliver(receiver.url("/moved"), ("127.0.0.1",), "e", "{}", SECRET, NOW, 2)
    assert outcome.status_code == 302 and not outcome.delivered
    assert len(receiver.requests("/moved")) == 1  # not followed
    refused = outbound.deliver("https://localhost/in", (), "e", "{}", SECRET, NOW, 2)
    assert refused.status_code is None and refused.error.startswith("refused:")


def test_an_attempt_ends_at_the_timeout_however_the_subscriber_trickles(receiver):
    receiver.hang("/slow", 3)
    started = datetime.now(timezone.utc)
    outcome = outbound.deliver(receiver.url("/slow"), ("127.0.0.1",), "e", "{}", SECRET, started, 0.5)
    assert outcome.status_code is None and "0.5" in outcome.error
    assert datetime.now(timezone.utc) - started < timedelta(seconds=1.5)


def _self_signed(tmp_path, name):
    """A certificate for `name` and its key, as PEM files (the certificate is its own CA)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(NOW - timedelta(days=1))
            .not_valid_after(datetime.now(timezone.utc) + timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


# Its own interpreter: pytest's plugins import ssl before eventlet patches it (the services patch first).
TLS_SCRIPT = r"""
import eventlet
eventlet.monkey_patch()
import ssl, sys
from webhook_service import outbound
from tests.harness import ROOT
from tests.servers.webhook_receiver import WebhookReceiver

cert, key = sys.argv[1:3]
server = WebhookReceiver().start()
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
server._server.socket = context.wrap_socket(server._server.socket, server_side=True)
status, _ = outbound.post(f"https://hooks.test:{server.port}/tls", "127.0.0.1", {}, "{}", 2, verify=cert)
print(status, server.requests("/tls")[0].headers["Host"] == f"hooks.test:{server.port}")
try:
    outbound.post(f"https://other.test:{server.port}/tls", "127.0.0.1", {}, "{}", 2, verify=cert)
except outbound.requests.exceptions.SSLError:
    print("refused")
"""


def test_https_to_the_checked_address_still_verifies_the_host_name(tmp_path):
    cert, key = _self_signed(tmp_path, "hooks.test")
    run = subprocess.run([sys.executable, "-c", TLS_SCRIPT, cert, key], capture_output=True, text=True, timeout=60,
                         cwd=ROOT)
    assert run.stdout.split() == ["200", "True", "refused"], run.stdout + run.stderr


def test_the_prune_timer_deletes_in_batches_what_ended_past_the_retention_and_keeps_the_pending(monkeypatch):
    store = InMemoryWebhookStore()
    long_ago = datetime.now(timezone.utc) - timedelta(days=SETTINGS.webhook_retention_days + 1)
    hook = store.insert_webhook(uuid.uuid4(), {"url": "https://hooks.example/in", "event_types": ["order_created"],
                                               "description": None, "enabled": True}, "hooks.example", "x", long_ago)
    for _ in range(5):
        store.record_deliveries("order_created", [(uuid.uuid4(), long_ago, "{}")], long_ago)
    for claimed in store.claim_due(long_ago, long_ago + timedelta(seconds=30), 4, 10, {}):  # four delivered
        store.record_attempt(claimed, domain.after_attempt(claimed, domain.Outcome(200), long_ago, 10, 5, 0.5),
                             long_ago)
    monkeypatch.setattr(db, "PRUNE_BATCH", 2)
    webhooks = worker_factory(service_module.WebhookService, uow=FakeUnitOfWork(store), settings=SETTINGS)
    assert webhooks.prune() == 8  # four deliveries, then their four events, two per statement
    [pending] = store.list_deliveries(hook.id, {}, 10)
    assert pending.status == "pending" and list(store.tables["events"]) == [pending.event_id]
    assert webhooks.prune() == 0


# -- which event types reach the service (bindings.py), on the in-memory store --------------------

class RecordedBindings:
    """EventBindings' contract, recorded: each `route` with the moment it was done, each `apply`."""

    def __init__(self, fail=None):
        self.fail = fail
        self.routed, self.applied = [], []

    def route(self, event_types):
        if self.fail is not None:
            raise self.fail
        self.routed.append((list(event_types), datetime.now(timezone.utc)))

    def apply(self, wanted, among=None):
        if self.fail is not None:
            raise self.fail
        self.applied.append((set(wanted), among))


def _webhooks_service(store, bindings):
    settings = SETTINGS.model_copy(update={"webhook_allow_hosts": ("127.0.0.1",)})
    return worker_factory(service_module.WebhookService, uow=FakeUnitOfWork(store), settings=settings,
                          bindings=bindings, caller=Caller("admin-1", ADMIN))


def _create(webhooks, *event_types, **fields):
    return webhooks.create_webhook({"url": "http://127.0.0.1:9/in", "event_types": list(event_types), **fields})


def test_a_webhook_is_in_force_only_from_after_its_event_types_are_routed():
    store, bindings = InMemoryWebhookStore(), RecordedBindings()
    webhooks = _webhooks_service(store, bindings)
    hook = _create(webhooks, "order_created", "stock_low")
    [(routed, routed_at)] = bindings.routed
    assert routed == ["order_created", "stock_low"] and store.tables["versions"][-1]["valid_from"] >= routed_at
    off = _create(webhooks, "customer_created", enabled=False)
    webhooks.update_webhook(off["id"], {"description": "later"})
    webhooks.update_webhook(hook["id"], {"enabled": False})
    assert len(bindings.routed) == 1  # nothing newly wanted
    webhooks.update_webhook(off["id"], {"enabled": True})
    webhooks.update_webhook(hook["id"], {"enabled": True, "event_types": ["stock_low", "invoice_issued"]})
    webhooks.update_webhook(off["id"], {"event_types": ["customer_created", "order_created"]})
    assert [types for types, _ in bindings.routed[1:]] == [
        ["customer_created"], ["stock_low", "invoice_issued"], ["order_created"]]
    assert store.tables["versions"][-1]["valid_from"] >= bindings.routed[-1][1]


def test_a_webhook_whose_events_cannot_be_routed_is_neither_created_nor_enabled():
    store = InMemoryWebhookStore()
    off = _create(_webhooks_service(store, RecordedBindings()), "order_created", enabled=False)
    webhooks = _webhooks_service(store, RecordedBindings(fail=ConnectionRefusedError("broker down")))
    with pytest.raises(ServiceUnavailable):
        _create(webhooks, "order_created")
    with pytest.raises(ServiceUnavailable):
        webhooks.update_webhook(off["id"], {"enabled": True})
    assert [w.id for w in store.tables["webhooks"].values()] == [uuid.UUID(off["id"])]
    assert store.get_webhook(uuid.UUID(off["id"])).enabled is False


def test_a_deleted_webhooks_types_are_unbound_at_once_unless_another_wants_them():
    store, bindings = InMemoryWebhookStore(), RecordedBindings()
    webhooks = _webhooks_service(store, bindings)
    gone = _create(webhooks, "order_created", "stock_low")
    _create(webhooks, "stock_low")
    webhooks.delete_webhook(gone["id"])
    assert bindings.applied == [({"stock_low"}, ["order_created", "stock_low"])]
    # The broker gone: the delete stands all the same (the timer unbinds later).
    bindings.fail = ConnectionRefusedError("broker down")
    webhooks.delete_webhook(_create(_webhooks_service(store, RecordedBindings()), "invoice_issued")["id"])
    assert store.wanted_event_types(datetime.now(timezone.utc)) == {"stock_low"}


def test_the_timer_binds_what_is_wanted_and_unbinds_the_rest():
    store, bindings = InMemoryWebhookStore(), RecordedBindings()
    webhooks = _webhooks_service(store, bindings)
    assert webhooks.reconcile_bindings() == []
    _create(webhooks, "stock_low", "order_created")
    assert webhooks.reconcile_bindings() == ["order_created", "stock_low"]
    assert bindings.applied == [(set(), None), ({"order_created", "stock_low"}, None)]
    bindings.fail = ConnectionRefusedError("broker down")
    assert webhooks.reconcile_bindings() is None  # the next run tries again
