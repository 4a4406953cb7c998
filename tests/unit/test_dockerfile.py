"""The image's Dockerfile, read with dockerfile-parse (no Docker engine here): multi-stage
on a pinned slim base, no compilers in what runs, a non-root user, the invoice fonts
inside, no HEALTHCHECK (compose and Kubernetes probe the processes themselves)."""
import fnmatch
import json
import re
import shlex
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser

ROOT = Path(__file__).resolve().parents[2]
# Packages that build code rather than run it.
BUILD_TOOLS = re.compile(r"^(gcc|g\+\+|cpp|clang|make|cmake|build-essential|.*-dev|libc6-dev|cargo|rustc|git)$")
# What the processes read from the working directory at run time, and the fonts invoice PDFs embed.
RUNTIME_FILES = ["config.yml", "alembic.ini", "migrations/env.py", "gateway/gunicorn_conf.py", "Procfile"]


@pytest.fixture(scope="module")
def parsed():
    return DockerfileParser(path=str(ROOT / "Dockerfile"))


def stages(parsed):
    """[[instruction, ...], ...]: the instructions of each stage, FROM first."""
    out = []
    for instruction in parsed.structure:
        if instruction["instruction"] == "FROM":
            out.append([])
        if out and instruction["instruction"] != "COMMENT":
            out[-1].append(instruction)
    return out


def final(parsed):
    return stages(parsed)[-1]


def installed_packages(run_value):
    packages = []
    for command in re.split(r"&&|;|\|\|", run_value):
        words = shlex.split(command)
        if words[:2] in (["apt-get", "install"], ["apt", "install"]) or words[:1] == ["apk"]:
            packages += [word for word in words[2:] if not word.startswith("-")]
    return packages


def ignored(path):
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    parts = Path(path).parts
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    return any(fnmatch.fnmatch(prefix, pattern.removeprefix("**/")) or fnmatch.fnmatch(prefix, pattern)
               for pattern in patterns for prefix in prefixes)


def test_multi_stage_on_a_pinned_slim_base(parsed):
    assert parsed.is_multistage and len(stages(parsed)) >= 2
    for image in parsed.parent_images:
        assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-[a-z]+(@sha256:[0-9a-f]{64})?", image), image


def test_the_runtime_takes_only_the_built_virtualenv_from_the_build(parsed):
    copies = [i["value"] for i in final(parsed) if i["instruction"] == "COPY" and "--from=" in i["value"]]
    assert copies == ["--from=build /opt/venv /opt/venv"]


def test_no_compilers_in_the_final_stage(parsed):
    for instruction in final(parsed):
        if instruction["instruction"] == "RUN":
            tools = [p for p in installed_packages(instruction["value"]) if BUILD_TOOLS.match(p)]
            assert tools == [], instruction["value"]


def test_it_runs_as_a_non_root_user(parsed):
    users = [i["value"] for i in final(parsed) if i["instruction"] == "USER"]
    assert users, "the final stage sets no USER"
    uid, _, gid = users[-1].partition(":")
    # Numeric, so Kubernetes' runAsNonRoot can check it without reading /etc/passwd.
    assert uid.isdigit() and int(uid) > 0 and (not gid or int(gid) > 0), users[-1]
    after = final(parsed)[[i["value"] for i in final(parsed)].index(users[-1]):]
    assert not [i for i in after if i["instruction"] == "RUN"], "nothing runs as root after USER"


def test_no_healthcheck(parsed):
    assert not [i for i in parsed.structure if i["instruction"] == "HEALTHCHECK"]


def test_the_fonts_are_inside(parsed):
    runs = " ".join(i["value"] for i in final(parsed) if i["instruction"] == "RUN")
    # Chinese, Japanese and Korean glyphs: Debian's Droid Sans Fallback, a system package.
    assert "fonts-droid-fallback" in installed_packages(runs)
    # The fonts invoice_service ships come with its code.
    assert [i["value"] for i in final(parsed) if i["instruction"] == "COPY" and "--from" not in i["value"]] == [". ."]
    for font in sorted((ROOT / "invoice_service").glob("fonts/*")):
        assert not ignored(font.relative_to(ROOT)), font


def test_the_build_context_keeps_what_the_processes_read(parsed):
    for path in RUNTIME_FILES:
        assert (ROOT / path).exists() and not ignored(path), path
    for package in ("common", "gateway", "customer_service", "inventory_service", "order_service",
                    "notification_service", "invoice_service", "scripts"):
        assert not ignored(f"{package}/__init__.py"), package
    for path in ("tests/conftest.py", ".venv/bin/python", ".git/HEAD", "test-output/stack.log"):
        assert ignored(path), path


def test_the_default_command_is_the_gateway(parsed):
    procfile = dict(line.split(":", 1) for line in (ROOT / "Procfile").read_text().splitlines() if line.strip())
    [cmd] = [i["value"] for i in final(parsed) if i["instruction"] == "CMD"]
    assert json.loads(cmd) == shlex.split(procfile["gateway"])  # the exec form: a JSON list
