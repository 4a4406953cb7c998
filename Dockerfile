# One image for every process: the Nameko services, the gateway and the migration.
# docker-compose.yml and the Kubernetes Deployments (ops/k8s/) choose the process by
# its command. No HEALTHCHECK: compose and Kubernetes probe the processes themselves
# (each service's metrics port answers /health/live and /health/ready).
#
# The base is pinned to a patch release; bump it on purpose (and pin its digest,
# python:<tag>@sha256:..., when you build for a registry).
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# ---- build: the dependencies into a virtualenv, the only thing the runtime takes
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore
RUN python -m venv /opt/venv
# Only pyproject.toml: a change to the code does not reinstall the dependencies.
COPY pyproject.toml /src/pyproject.toml
RUN /opt/venv/bin/python -c "import subprocess, sys, tomllib; \
deps = tomllib.load(open('/src/pyproject.toml', 'rb'))['project']['dependencies']; \
subprocess.check_call([sys.executable, '-m', 'pip', 'install', *deps])"

# ---- runtime
FROM ${PYTHON_IMAGE} AS runtime
# GATEWAY_HOST: inside a container the gateway listens on every interface.
# PYTHONPATH: the project runs from /app, the working directory, where config.yml,
# alembic.ini, migrations/ and gateway/gunicorn_conf.py are read at run time.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONPATH=/app \
    PATH=/opt/venv/bin:$PATH \
    GATEWAY_HOST=0.0.0.0

# Invoice PDFs embed the fonts invoice_service ships (copied with the code below);
# Droid Sans Fallback is the system font for Chinese, Japanese and Korean names.
RUN apt-get update \
    && apt-get install -y --no-install-recommends fonts-droid-fallback \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --no-create-home --home-dir /app \
       --shell /usr/sbin/nologin app

COPY --from=build /opt/venv /opt/venv
WORKDIR /app
# Owned by root and not writable by the app: it runs read-only (ops/k8s/ mounts /tmp).
COPY . .
RUN python -m compileall -q /app

USER 10001:10001
EXPOSE 8000
CMD ["gunicorn", "-c", "gateway/gunicorn_conf.py", "gateway.wsgi:app"]
