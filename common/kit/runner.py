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
    """nameko's own shell (`n.rpc`, `n.dispatch_event`, `n.config`) on our settings."""
    from nameko.cli.shell import ShellRunner, make_nameko_helper

    banner = f"Nameko shell\nBroker: {settings.amqp_uri}"
    ShellRunner(banner, {"n": make_nameko_helper(settings.nameko_config())}).start_shell(name=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
