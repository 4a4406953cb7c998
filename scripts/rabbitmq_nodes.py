"""RabbitMQ nodes of our own beside the machine's broker, from Debian's rabbitmq-server.

    python -m scripts.rabbitmq_nodes cluster-start [--nodes 3] [--base-port 5681] [--dir var/rabbitmq]
    python -m scripts.rabbitmq_nodes cluster-status
    python -m scripts.rabbitmq_nodes cluster-stop

Each node has its own name (`oms-1@localhost`, ...), AMQP port, distribution
port (AMQP port + 20000), data directory and log directory, and all share
one Erlang cookie (written into the data directory, which is each node's
HOME), so they can form a cluster; the machine's own broker is not touched.
No plugins are enabled (no management ports to collide). `cluster-start`
gives every process its own user (scripts/rabbitmq_users.py: the same
definitions compose loads), removes guest, and prints the operator's AMQP_URI
that lists every node (kombu's failover form, `amqp://a;amqp://b;...`);
`python -m scripts.rabbitmq_users uri <process> --uri ...` is a process's own.

Tests use `Node` directly: a single node they can pause (SIGSTOP) or stop.
"""
import argparse
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from scripts import rabbitmq_users

RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")
ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DIR = ROOT / "var" / "rabbitmq"


def _bin(name):
    path = RABBITMQ_BIN / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} not found: install RabbitMQ (Debian/Ubuntu: apt-get install rabbitmq-server)")
    return found


@dataclass
class Node:
    name: str            # e.g. oms-1 (the node is oms-1@localhost)
    port: int            # AMQP
    base_dir: Path       # holds every node's directory and the shared cookie

    @property
    def node(self):
        return f"{self.name}@localhost"

    @property
    def dir(self):
        return Path(self.base_dir) / self.name

    @property
    def amqp_uri(self):
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def env(self):
        home = self.dir
        return {
            **os.environ, "HOME": str(home),
            "RABBITMQ_NODENAME": self.node, "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.port + 20000),
            "RABBITMQ_MNESIA_BASE": str(home / "mnesia"), "RABBITMQ_LOG_BASE": str(home / "log"),
            "RABBITMQ_PID_FILE": str(home / "pid"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(home / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(home / "rabbitmq.conf"),
            # Not the machine broker's env file (it names that node).
            "RABBITMQ_CONF_ENV_FILE": str(home / "rabbitmq-env.conf"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        }

    def ctl(self, *args, check=True, timeout=120):
        return subprocess.run([_bin("rabbitmqctl"), "-n", self.node, *args], env=self.env(), check=check,
                              capture_output=True, text=True, timeout=timeout)

    def start(self, cookie, config_lines=()):
        home = self.dir
        (home / "mnesia").mkdir(parents=True, exist_ok=True)
        (home / "log").mkdir(parents=True, exist_ok=True)
        cookie_file = home / ".erlang.cookie"
        if cookie_file.exists():
            cookie_file.chmod(0o600)
        cookie_file.write_text(cookie)
        cookie_file.chmod(0o400)
        (home / "enabled_plugins").write_text("[].\n")
        (home / "rabbitmq-env.conf").write_text("")
        (home / "rabbitmq.conf").write_text("\n".join([
            f"listeners.tcp.default = 127.0.0.1:{self.port}", "loopback_users = none", *config_lines]) + "\n")
        subprocess.run([_bin("rabbitmq-server"), "-detached"], env=self.env(), check=True,
                       capture_output=True, timeout=60)
        self.ctl("wait", str(home / "pid"), "--timeout", "90")
        self.ctl("await_startup")
        return self

    def pid(self):
        return int((self.dir / "pid").read_text().strip())

    def pause(self):
        """Freeze the node (SIGSTOP): its connections stay open but nothing answers."""
        os.kill(self.pid(), signal.SIGSTOP)

    def resume(self):
        os.kill(self.pid(), signal.SIGCONT)

    def stop(self):
        """Stop the node if it runs (its data stays)."""
        try:
            os.kill(self.pid(), signal.SIGCONT)
        except (OSError, ValueError):
            return
        self.ctl("stop", check=False)

    def stop_app(self):
        self.ctl("stop_app")

    def start_app(self):
        self.ctl("start_app")
        self.ctl("await_startup")

    def join(self, seed):
        """Make this (running) node a member of `seed`'s cluster."""
        self.ctl("stop_app")
        self.ctl("reset")
        self.ctl("join_cluster", seed.node)
        self.ctl("start_app")
        self.ctl("await_startup")

    def running(self):
        return self.ctl("status", check=False, timeout=30).returncode == 0


def new_cookie():
    return secrets.token_hex(16).upper()


def cluster_nodes(count=3, base_port=5681, base_dir=DEFAULT_DIR):
    return [Node(f"oms-{index}", base_port + index - 1, Path(base_dir)) for index in range(1, count + 1)]


def failover_uri(nodes):
    """kombu's failover form: every node, tried in turn."""
    return ";".join(node.amqp_uri for node in nodes)


def start_cluster(nodes, cookie=None):
    """Start the nodes and join the rest to the first; the nodes' failover URI."""
    cookie_file = Path(nodes[0].base_dir) / "cookie"
    cookie_file.parent.mkdir(parents=True, exist_ok=True)
    if cookie is None:
        cookie = cookie_file.read_text() if cookie_file.exists() else new_cookie()
    cookie_file.write_text(cookie)
    for node in nodes:
        if not node.running():
            node.start(cookie)
    members = nodes[0].ctl("cluster_status", "--formatter", "json").stdout
    for node in nodes[1:]:
        if node.node not in members:
            node.join(nodes[0])
    return failover_uri(nodes)


def main(argv):
    parser = argparse.ArgumentParser(prog="python -m scripts.rabbitmq_nodes", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["cluster-start", "cluster-stop", "cluster-status"])
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--base-port", type=int, default=5681)
    parser.add_argument("--dir", default=str(DEFAULT_DIR))
    args = parser.parse_args(argv)
    nodes = cluster_nodes(args.nodes, args.base_port, args.dir)
    if args.command == "cluster-start":
        started = time.monotonic()
        uri = start_cluster(nodes)
        made = rabbitmq_users.apply(lambda *args: nodes[0].ctl(*args).stdout)
        nodes[0].ctl("delete_user", "guest", check=False)  # guest stays for plain `make run` only
        uri = rabbitmq_users.with_user(uri, rabbitmq_users.OPERATOR, made[rabbitmq_users.OPERATOR])
        print(f"RabbitMQ cluster of {len(nodes)} nodes up in {time.monotonic() - started:.0f} s:")
        print(f"AMQP_URI='{uri}'")
    elif args.command == "cluster-stop":
        for node in reversed(nodes):
            node.stop()
        print("stopped")
    else:
        print(nodes[0].ctl("cluster_status", check=False).stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
