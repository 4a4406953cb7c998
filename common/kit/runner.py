"""Start a Nameko service or the nameko shell, the one way every service process starts.

    python -m common.kit.runner run order_service.service:OrderService
    python -m common.kit.runner shell

In this order: eventlet patches the standard library (as `nameko run` does),
the settings are read and checked (a bad one exits with status 2, naming the
variable), the library adaptations are applied, logging is configured, and
nameko runs the service with a config built from the settings.
"""
import eventlet

eventlet.monkey_patch()  # noqa: E402 (first, before anything imports socket or threading)

import argparse  # noqa: E402
import getpass  # noqa: E402
import logging.config  # noqa: E402
import sys  # noqa: E402

import common  # noqa: E402,F401 (filters eventlet's deprecation notice)
from common.contract.settings import SettingsError, load_settings  # noqa: E402
from common.kit import patches  # noqa: E402
from common.observability.log import logging_config, set_service  # noqa: E402
from common.observability.tracing import configure_tracing  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m common.kit.runner", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run one service: module.path:ServiceClass")
    run.add_argument("service")
    commands.add_parser("shell", help="nameko shell against the configured broker")
    args = parser.parse_args(argv)

    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"{parser.prog}: {exc}", file=sys.stderr)
        return 2
    logging.config.dictConfig(logging_config(settings.log_level))
    if args.command == "shell":
        return _shell(settings)
    patches.apply(patches.FOR_SERVICES)
    service_class = _import_service(args.service)
    set_service(service_class.name)
    configure_tracing(service_class.name, settings)
    from nameko.cli.run import run as run_services

    run_services([service_class], settings.nameko_config())
    return 0


def _import_service(path):
    module_name, _, class_name = path.partition(":")
    if not class_name:
        raise SystemExit(f"name the service class: {module_name}:ServiceClass")
    module = __import__(module_name, fromlist=[class_name])
    return getattr(module, class_name)


def _shell(settings):
    """nameko's own shell on our settings: `n.rpc` calls as an admin (`shell:<user>`, signed
    with CALLER_SIGNING_KEY), `n.rpc_as(caller)` as anyone else, `n.dispatch_event`, `n.config`."""
    from nameko.cli.shell import ShellRunner

    try:
        sub = f"shell:{getpass.getuser()}"
    except (OSError, KeyError):  # no login name (a container's arbitrary uid)
        sub = "shell:unknown"
    banner = f"Nameko shell\nBroker: {settings.amqp_uri}\nn.rpc calls as admin {sub!r}; n.rpc_as(caller) as another"
    ShellRunner(banner, {"n": _shell_helper(settings.nameko_config(), sub)}).start_shell(name=None)
    return 0


def _shell_helper(config, sub):
    """nameko's shell helper (nameko.cli.shell.make_nameko_helper), its proxies signing their caller."""
    from types import ModuleType

    from nameko.standalone.events import event_dispatcher

    from common.contract.caller import ADMIN, CALLER_KEY
    from common.kit.rpc import SignedClusterRpcProxy

    proxies = []

    def rpc_as(caller):
        """A proxy whose calls carry `caller` ({"sub", "role", "customer_id"}), signed."""
        proxies.append(SignedClusterRpcProxy(config, context_data={CALLER_KEY: caller}))
        return proxies[-1].start()

    def disconnect():
        for proxy in proxies:
            proxy.stop()

    module = ModuleType("nameko")
    module.rpc = rpc_as({"sub": sub, "role": ADMIN})
    module.rpc_as = rpc_as
    module.dispatch_event = event_dispatcher(config)
    module.config = config
    module.disconnect = disconnect
    return module


if __name__ == "__main__":
    sys.exit(main())
