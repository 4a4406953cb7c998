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


def test_every_adaptation_says_why_and_is_listed_for_a_process():
    for adaptation in patches.ALL:
        assert adaptation.why and adaptation.internal and adaptation.library
    assert set(patches.ALL) == set(patches.FOR_SERVICES) | set(patches.FOR_GATEWAY)


def test_the_pinned_versions_are_the_ones_these_adaptations_were_written_for():
    from importlib.metadata import version

    assert version("nameko") == "2.14.1"
    assert version("kombu").startswith("5.")
    assert version("gunicorn").startswith("27.")


def test_nameko_builds_its_reply_publisher_from_responder_publisher_cls():
    from nameko.amqp.publish import Publisher
    from nameko.rpc import Responder, RpcConsumer

    assert Responder.publisher_cls is Publisher or issubclass(Responder.publisher_cls, Publisher)
    assert "self.publisher_cls(" in inspect.getsource(Responder.send_response)
    assert "Responder(" in inspect.getsource(RpcConsumer.handle_result)


def test_nameko_publishers_find_their_producer_through_the_module_level_get_producer():
    from nameko.amqp import publish

    assert _parameters(publish.get_producer) == ["amqp_uri", "confirms", "ssl", "login_method", "transport_options"]
    assert "get_producer(" in inspect.getsource(publish.Publisher.publish)
    assert isinstance(publish.DEFAULT_TRANSPORT_OPTIONS, dict)


def test_the_kept_producer_lookup_has_nameko_s_signature():
    assert _parameters(patches._get_producer) == _parameters(
        __import__("nameko.amqp.publish", fromlist=["get_producer"]).get_producer)


def test_queue_consumer_acks_and_requeues_through_these_two_methods():
    from nameko.messaging import QueueConsumer

    for name in ("ack_message", "requeue_message"):
        assert _parameters(getattr(QueueConsumer, name)) == ["self", "message"]


def test_gunicorn_writes_its_own_errors_through_util_write_error():
    from gunicorn import util
    from gunicorn.workers import base

    assert _parameters(util.write_error) == ["sock", "status_int", "reason", "mesg"]
    assert callable(util.write_nonblock)
    assert "util.write_error(" in inspect.getsource(base.Worker.handle_error)


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
    probe = patches.Adaptation("probe", "lib", "lib.thing", "because", lambda: calls.append(1))
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

