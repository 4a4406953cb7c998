"""docker-compose.yml is valid and only runs things that exist in the project.

No Docker engine is needed: nothing is built or started.
"""
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from common.contract.services import GATEWAY, SERVICE_NAMES, SERVICES

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
# Procfile process name -> compose service running the same command (the registry's, and the gateway).
PROCFILE_TO_COMPOSE = {**{service.process: service.name for service in SERVICES}, GATEWAY: GATEWAY}
MODULE = re.compile(r"[a-z_]+(\.[a-z_]+)+(:[A-Za-z_]\w*)?")  # pkg.module[:attr]


@pytest.fixture(scope="module")
def services():
    return yaml.safe_load(COMPOSE_FILE.read_text())["services"]


def argv(command):
    return shlex.split(command) if isinstance(command, str) else list(command)


def procfile():
    lines = (ROOT / "Procfile").read_text().splitlines()
    return dict(line.split(":", 1) for line in lines if line.strip() and not line.startswith("#"))


def project_files(command):
    """The project files a command needs: config files, scripts and module paths."""
    args = argv(command)
    needed = ["alembic.ini"] if args[0] == "alembic" else []
    for arg in args[1:]:
        if arg.endswith((".py", ".yml", ".ini")):
            needed.append(arg)
        elif MODULE.fullmatch(arg):
            module = arg.split(":")[0].replace(".", "/")
            needed.append(module + ".py" if (ROOT / f"{module}.py").exists()
                          else module + "/__init__.py")
    return needed


@pytest.fixture(scope="module")
def validated():
    """docker-compose config -q of the stack, and of the stack with the cluster file on top,
    run side by side: {name: (exit status, stderr)}."""
    if shutil.which("docker-compose") is None:
        pytest.skip("docker-compose is not on PATH (apt-get install docker-compose)")
    files = {"stack": [COMPOSE_FILE], "cluster": [COMPOSE_FILE, ROOT / "docker-compose.cluster.yml"]}
    runs = {name: subprocess.Popen(["docker-compose", *(arg for path in paths for arg in ("-f", str(path))),
                                    "config", "-q"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                   text=True)
            for name, paths in files.items()}
    return {name: (run.wait(), run.stderr.read()) for name, run in runs.items()}


def test_compose_file_validates_with_docker_compose(validated):
    status, errors = validated["stack"]
    assert status == 0, errors


def test_required_services_and_healthchecks(services):
    required = {"rabbitmq", "postgres", "migrate", "mailpit", GATEWAY, *SERVICE_NAMES}
    assert required <= services.keys()
    assert "management" in services["rabbitmq"]["image"]
    for name in ("rabbitmq", "postgres", "gateway"):
        assert services[name].get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
    assert "/health" in " ".join(argv(services["gateway"]["healthcheck"]["test"]))


def test_dependencies(services):
    assert set(SERVICE_NAMES) <= set(services["gateway"]["depends_on"])
    for name in SERVICE_NAMES:
        assert services[name]["depends_on"]["migrate"] == {
            "condition": "service_completed_successfully"}


def test_every_build_uses_the_one_dockerfile(services):
    built = {name: svc["build"] for name, svc in services.items() if "build" in svc}
    assert set(built) >= {"migrate", GATEWAY, *SERVICE_NAMES}
    for name, build in built.items():
        if isinstance(build, str):
            build = {"context": build}
        assert Path(build["context"]) == Path("."), name
        assert build.get("dockerfile", "Dockerfile") == "Dockerfile", name
    assert (ROOT / "Dockerfile").is_file()


def test_commands_refer_to_project_files(services):
    for name, svc in services.items():
        if "command" not in svc or "build" not in svc:  # others run their image's own program
            continue
        needed = project_files(svc["command"])
        assert needed, f"{name}: no project file recognised in {svc['command']!r}"
        for path in needed:
            assert (ROOT / path).is_file(), f"{name}: {path} does not exist"


def test_notification_emails_go_to_mailpit_in_compose(services):
    environment = services["notification_service"]["environment"]
    assert environment["SMTP_HOST"].endswith("mailpit}") and environment["SMTP_PORT"].endswith("1025}")
    assert "mailpit" in services["mailpit"]["image"]
    assert "8025:8025" in services["mailpit"]["ports"]
    assert services["notification_service"]["depends_on"]["mailpit"] == {"condition": "service_started"}


def test_procfile_and_compose_run_the_same_commands(services):
    processes = procfile()
    assert set(processes) == set(PROCFILE_TO_COMPOSE)
    for service in SERVICES:  # the registry says how a service starts
        assert argv(processes[service.process]) == argv(service.command), service.process
    for process, service in PROCFILE_TO_COMPOSE.items():
        assert argv(services[service]["command"]) == argv(processes[process]), process


def test_mounted_project_files_exist(services):
    for name, svc in services.items():
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name}: {source} does not exist"


def test_prometheus_scrapes_each_service_on_its_metrics_port(services):
    from common.contract.services import SERVICES

    config = yaml.safe_load((ROOT / "ops/prometheus/prometheus.yml").read_text())
    targets = {target for job in config["scrape_configs"] for static in job["static_configs"]
               for target in static["targets"]}
    base = int(services["order_service"]["environment"]["METRICS_PORT"])
    expected = {f"{s.name}:{base + s.metrics_offset}" for s in SERVICES if s.name in services}
    assert targets == expected | {"gateway:8000"}


CLUSTER_FILE = ROOT / "docker-compose.cluster.yml"


def test_the_cluster_file_validates_on_top_of_the_stack(validated):
    status, errors = validated["cluster"]
    assert status == 0, errors


def test_the_cluster_file_has_three_brokers_and_two_of_everything():
    cluster = yaml.safe_load(CLUSTER_FILE.read_text())["services"]
    assert {"rabbitmq", "rabbitmq-2", "rabbitmq-3"} <= cluster.keys()
    uri = cluster["order_service"]["environment"]["AMQP_URI"]
    assert [part.split("@")[1].split(":")[0] for part in uri.split(";")] == ["rabbitmq", "rabbitmq-2", "rabbitmq-3"]
    for service in PROCFILE_TO_COMPOSE.values():
        if service != "gateway":
            assert cluster[service]["deploy"]["replicas"] == 2, service
            assert cluster[service]["environment"]["AMQP_QUORUM_QUEUES"] == "true", service
    assert argv(cluster["gateway-2"]["command"]) == argv(procfile()["gateway"])
    for name in ("rabbitmq", "rabbitmq-2", "rabbitmq-3"):
        assert (ROOT / cluster[name]["volumes"][0].split(":")[0]).exists()
