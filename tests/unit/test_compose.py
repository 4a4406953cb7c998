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

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
# Procfile process name -> compose service running the same command.
PROCFILE_TO_COMPOSE = {
    "customers": "customer_service",
    "inventory": "inventory_service",
    "orders": "order_service",
    "gateway": "gateway",
}
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


def test_compose_file_validates_with_docker_compose():
    if shutil.which("docker-compose") is None:
        pytest.skip("docker-compose is not on PATH (apt-get install docker-compose)")
    result = subprocess.run(["docker-compose", "-f", str(COMPOSE_FILE), "config", "-q"],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_required_services_and_healthchecks(services):
    required = {"rabbitmq", "postgres", "migrate", "customer_service",
                "inventory_service", "order_service", "gateway"}
    assert required <= services.keys()
    assert "management" in services["rabbitmq"]["image"]
    for name in ("rabbitmq", "postgres", "gateway"):
        assert services[name].get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
    assert "/health" in " ".join(argv(services["gateway"]["healthcheck"]["test"]))


def test_dependencies(services):
    assert {"customer_service", "inventory_service", "order_service"} <= set(
        services["gateway"]["depends_on"])
    for name in ("customer_service", "inventory_service", "order_service"):
        assert services[name]["depends_on"]["migrate"] == {
            "condition": "service_completed_successfully"}


def test_every_build_uses_the_one_dockerfile(services):
    built = {name: svc["build"] for name, svc in services.items() if "build" in svc}
    assert set(built) >= {"migrate", "customer_service", "inventory_service",
                          "order_service", "gateway"}
    for name, build in built.items():
        if isinstance(build, str):
            build = {"context": build}
        assert Path(build["context"]) == Path("."), name
        assert build.get("dockerfile", "Dockerfile") == "Dockerfile", name
    assert (ROOT / "Dockerfile").is_file()


def test_commands_refer_to_project_files(services):
    for name, svc in services.items():
        if "command" not in svc:
            continue
        needed = project_files(svc["command"])
        assert needed, f"{name}: no project file recognised in {svc['command']!r}"
        for path in needed:
            assert (ROOT / path).is_file(), f"{name}: {path} does not exist"


def test_procfile_and_compose_run_the_same_commands(services):
    processes = procfile()
    assert set(processes) == set(PROCFILE_TO_COMPOSE)
    for process, service in PROCFILE_TO_COMPOSE.items():
        assert argv(services[service]["command"]) == argv(processes[process]), process
