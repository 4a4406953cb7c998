"""Each library internal we adapt or read (common/kit/patches.py) still has the shape we rely on.

A failure here after an upgrade means an adaptation would silently stop
working: re-check it against the new version before changing the pin.
"""
import inspect

import pytest

from common.kit import patches
from tests import support


def _parameters(function):
    return list(inspect.signature(function).parameters)


def test_every_adaptation_says_why_and_why_no_hook_and_is_listed_for_a_process():
    for adaptation in patches.ALL:
        assert adaptation.why and adaptation.no_hook and adaptation.internal and adaptation.library
    assert set(patches.ALL) == set(patches.FOR_SERVICES) | set(patches.FOR_GATEWAY)


def test_the_pinned_versions_are_the_ones_these_adaptations_were_written_for():
    from importlib.metadata import version

    assert version("nameko") == "2.14.1"
    assert version("kombu").startswith("5.")
    assert version("gunicorn").startswith("27.")


def test_our_rpc_consumer_replies_as_nameko_s_does_with_our_responder():
    """ClusterableRpcConsumer.handle_result is nameko's with UnconfirmedResponder in place of Responder."""
    from nameko.rpc import Responder, RpcConsumer

    nameko_source = inspect.getsource(RpcConsumer.handle_result)
    assert "responder = Responder(\n            amqp_uri, exchange, serializer, message, ssl=ssl, login_method=" \
           "login_method\n        )" in nameko_source
    assert "responder.send_response(result, exc_info)" in nameko_source
    assert "self.queue_consumer.ack_message(message)" in nameko_source
    assert _parameters(Responder.__init__) == ["self", "amqp_uri", "exchange", "serializer", "message", "ssl",
                                               "login_method"]
    assert "self.publisher_cls(" in inspect.getsource(Responder.send_response)
    assert "self.rpc_consumer.handle_result(" in inspect.getsource(__import__("nameko.rpc").rpc.Rpc.handle_result)


def test_a_reply_is_published_without_confirms_and_then_acked(monkeypatch):
    from types import SimpleNamespace

    from common.kit.rpc import ClusterableRpcConsumer, UnconfirmedReplyPublisher, UnconfirmedResponder

    sent, acked = [], []
    monkeypatch.setattr(UnconfirmedResponder, "send_response",
                        lambda self, result, exc_info: sent.append(self) or (result, exc_info))
    consumer = ClusterableRpcConsumer()
    consumer.container = SimpleNamespace(config={"AMQP_URI": "amqp://broker/", "serializer": "json",
                                                 "rpc_exchange": "nameko-rpc"})
    consumer.queue_consumer = SimpleNamespace(ack_message=acked.append)
    assert consumer.handle_result("message", {"ok": 1}, None) == ({"ok": 1}, None)
    [responder] = sent
    assert responder.publisher_cls is UnconfirmedReplyPublisher and not UnconfirmedReplyPublisher.use_confirms
    assert (responder.amqp_uri, responder.exchange.name, responder.serializer, responder.message) == (
        "amqp://broker/", "nameko-rpc", "json", "message")
    assert acked == ["message"]


def test_every_queue_consumer_of_every_service_survives_dead_connections():
    """Each entrypoint and reply listener that consumes names ResilientQueueConsumer (or
    BatchQueueConsumer, its subclass for batch handlers) as its `queue_consumer` (a container
    shares one per class): none falls back to nameko's own."""
    from importlib import import_module

    from nameko.containers import ServiceContainer
    from nameko.messaging import QueueConsumer

    from common.contract.services import SERVICES
    from common.contract.settings import load_settings
    from common.kit.consumers import BatchQueueConsumer
    from common.kit.rpc import ResilientQueueConsumer

    config = load_settings({}).nameko_config()
    for service in SERVICES:
        module, _, name = service.module.partition(":")
        container = ServiceContainer(getattr(import_module(module), name), config)
        consumers = [ext for ext in container.shared_extensions.values() if isinstance(ext, QueueConsumer)]
        kinds = {type(consumer) for consumer in consumers}
        assert ResilientQueueConsumer in kinds and kinds <= {ResilientQueueConsumer, BatchQueueConsumer}, \
            service.name
        assert len(consumers) == len(kinds), service.name


def test_nameko_acks_and_requeues_through_the_queue_consumer_s_two_methods():
    from nameko.events import EventHandler
    from nameko.messaging import Consumer, QueueConsumer
    from nameko.rpc import ReplyListener, RpcConsumer, RpcProxy

    for name in ("ack_message", "requeue_message"):
        assert _parameters(getattr(QueueConsumer, name)) == ["self", "message"]
    for owner in (RpcConsumer, ReplyListener, Consumer):
        assert isinstance(owner.queue_consumer, QueueConsumer)
    assert issubclass(EventHandler, Consumer) and isinstance(RpcProxy.rpc_reply_listener, ReplyListener)


def test_an_ack_on_a_dead_connection_is_logged_not_raised(caplog):
    from types import SimpleNamespace

    from common.kit.rpc import ResilientQueueConsumer

    def reset():
        raise ConnectionResetError(104, "Connection reset by peer")

    message = SimpleNamespace(channel=SimpleNamespace(connection=object()), ack=reset, requeue=reset)
    consumer = ResilientQueueConsumer()
    consumer.ack_message(message)
    consumer.requeue_message(message)
    assert [record.getMessage().split(" on ")[0] for record in caplog.records] == ["ack", "requeue"]


def test_nameko_publishers_find_their_producer_through_the_module_level_get_producer():
    from nameko.amqp import publish

    assert _parameters(publish.get_producer) == ["amqp_uri", "confirms", "ssl", "login_method", "transport_options"]
    assert "get_producer(" in inspect.getsource(publish.Publisher.publish)
    assert isinstance(publish.DEFAULT_TRANSPORT_OPTIONS, dict)


def test_the_kept_producer_lookup_has_nameko_s_signature():
    assert _parameters(patches._get_producer) == _parameters(
        __import__("nameko.amqp.publish", fromlist=["get_producer"]).get_producer)


def test_gunicorn_writes_its_own_errors_through_util_write_error():
    from gunicorn import util
    from gunicorn.workers import base

    assert _parameters(util.write_error) == ["sock", "status_int", "reason", "mesg"]
    assert callable(util.write_nonblock)
    assert "util.write_error(" in inspect.getsource(base.Worker.handle_error)


def test_gunicorn_writes_access_lines_through_its_logger_s_access_only():
    """gateway/gunicorn_conf.py's logger_class (NoAccessLines) turns them off by overriding it."""
    from gunicorn import glogging
    from gunicorn.workers import gthread

    assert _parameters(glogging.Logger.access) == ["self", "resp", "req", "environ", "request_time"]
    assert "self.log.access(resp, req, environ, request_time)" in inspect.getsource(
        gthread.ThreadWorker.handle_request)
    assert "self.atoms(resp, req, environ, request_time)" in inspect.getsource(glogging.Logger.access)


def test_gunicorn_json_error_is_a_complete_response_in_the_contract_shape():
    raw = patches.json_error_response(414, "Request-URI Too Long", "Request Line is too large (5000 > 4094)")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 414 Request-URI Too Long")
    assert b"Content-Type: application/json" in head
    assert body == (b'{"error": {"code": "request-uri_too_long", "message": '
                    b'"Request Line is too large (5000 > 4094)", "details": {}}}')


def test_subclass_hooks_we_use_instead_of_patches_exist():
    from nameko.amqp.publish import Publisher
    from nameko.rpc import MethodProxy

    assert MethodProxy.publisher_cls is Publisher  # our proxies set their own; nobody patches this one
    for attribute in ("delivery_mode", "use_confirms", "retry_policy", "transport_options"):
        assert hasattr(Publisher, attribute)
    assert _parameters(MethodProxy.__init__) == ["self", "worker_ctx", "service_name", "method_name",
                                                 "reply_listener", "options"]


def test_private_attributes_we_read_are_still_there():
    from nameko.rpc import ReplyListener
    from nameko.standalone.rpc import ClusterRpcProxy

    proxy = ClusterRpcProxy({"AMQP_URI": "amqp://guest:guest@127.0.0.1:1/"})
    assert hasattr(proxy, "_worker_ctx") and hasattr(proxy, "_reply_listener")
    assert isinstance(ReplyListener()._reply_events, dict)


def test_apply_patches_each_once_and_require_names_what_is_missing(monkeypatch):
    calls = []
    probe = patches.Adaptation("probe", "lib", "lib.thing", "because", "no hook", lambda: calls.append(1))
    monkeypatch.setattr(patches, "_applied", set())
    with pytest.raises(RuntimeError, match="probe"):
        patches.require([probe], "a service")
    patches.apply([probe, probe])
    patches.apply([probe])
    assert calls == [1]
    patches.require([probe], "a service")


def test_library_internals_are_assigned_in_the_adaptations_module_only():
    import re

    root = support.ROOT
    tracked = support.python_files()
    assignment = re.compile(r"^\s*(Responder|MethodProxy|QueueConsumer|Publisher|publish|util|Rpc|RpcConsumer)"
                            r"\.\w+(\s*,\s*\w+\.\w+)*\s*=[^=]", re.MULTILINE)
    assigning = [path for path in tracked if path != "common/kit/patches.py"
                 and assignment.search((root / path).read_text())]
    assert assigning == []

