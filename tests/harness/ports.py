"""Free TCP ports for servers of our own, picked where no outgoing connection will take them."""
import random
import socket
from pathlib import Path

from common.contract.services import SERVICES


def _outgoing_ports_start():
    """The first port the kernel hands out for outgoing connections (Linux's default if unreadable)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


# Below the kernel's range for outgoing connections: a stack opens many connections, each on a port
# from that range, and a server whose port one of them took between our check and its bind would
# not start.
_OUTGOING_PORTS_START = _outgoing_ports_start()


def _free_ports(count=1, also_at=0):
    """The first of `count` consecutive free ports, below the outgoing range; with
    `also_at`, the ports `also_at` higher are free (and below it) too."""
    while True:
        port = random.randrange(10000, _OUTGOING_PORTS_START - also_at - count)
        if all(_is_free(candidate + shift) for candidate in range(port, port + count) for shift in {0, also_at}):
            return port


def _is_free(port):
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port():
    return _free_ports()


def free_metrics_base():
    """A METRICS_PORT for a stack: it and the port at every service's offset from it are free."""
    return _free_ports(max(service.metrics_offset for service in SERVICES) + 1)


def free_node_port(nodes=1):
    """The first of `nodes` consecutive free AMQP ports for RabbitMQ nodes of our own
    whose distribution ports (AMQP port + 20000, scripts/rabbitmq_nodes.py) are free too."""
    return _free_ports(nodes, also_at=20000)
