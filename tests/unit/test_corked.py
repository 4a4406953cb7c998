"""corked(): a batch's writes held back until the block ends, and never an error of its own."""
import socket

import pytest

from common.kit.batch_publisher import corked

pytestmark = pytest.mark.skipif(not hasattr(socket, "TCP_CORK"), reason="TCP_CORK is Linux's")


@pytest.fixture
def connected():
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname())
    peer, _ = server.accept()
    yield client, peer
    for sock in (client, peer, server):
        sock.close()


def cork_of(sock):
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_CORK)


def test_the_socket_is_corked_inside_the_block_only_and_what_was_written_arrives(connected):
    client, peer = connected
    with corked(client):
        assert cork_of(client) == 1
        client.sendall(b"one")
        client.sendall(b"two")
    assert cork_of(client) == 0
    peer.settimeout(5)
    received = b""
    while len(received) < 6:
        received += peer.recv(16)
    assert received == b"onetwo"


def test_an_error_in_the_block_still_uncorks(connected):
    client, _ = connected
    with pytest.raises(RuntimeError), corked(client):
        raise RuntimeError("boom")
    assert cork_of(client) == 0


def test_a_closed_socket_or_none_is_left_as_it_is(connected):
    client, _ = connected
    client.close()
    with corked(client):
        pass
    with corked(None):
        pass
