#!/usr/bin/env bash
# `make run`: database, migrations, the three services and the gateway, natively.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
export PATH="$PWD/.venv/bin:$PATH"
export GATEWAY_PORT="${GATEWAY_PORT:-8000}"

if ! $PY -m scripts.infra check; then
    if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
        echo "Starting RabbitMQ and PostgreSQL with docker compose..."
        docker compose up -d --wait rabbitmq postgres
    else
        cat >&2 <<'HELP'

The stack needs a RabbitMQ broker (AMQP_URI) and a PostgreSQL server (DATABASE_URL).
Start the one named above, for example:
  RabbitMQ:   rabbitmq-server -detached        (Debian/Ubuntu: apt-get install rabbitmq-server)
  PostgreSQL: pg_ctlcluster <version> main start   (Debian/Ubuntu: apt-get install postgresql)
  or, with Docker:  docker compose up -d rabbitmq postgres
or point AMQP_URI / DATABASE_URL at running ones, then run `make run` again.
HELP
        exit 1
    fi
fi

$PY -m scripts.infra ensure-db
$PY -m alembic upgrade head

if [ -z "${JWT_SECRET:-}" ]; then
    JWT_SECRET=$($PY -c 'from common.config import DEVELOPMENT_JWT_SECRET as s; print(s)')
    echo "JWT_SECRET is not set: using the development default '$JWT_SECRET' (never in production)."
fi
export JWT_SECRET

honcho start -f Procfile &
honcho_pid=$!
trap 'kill -INT $honcho_pid 2>/dev/null; wait $honcho_pid 2>/dev/null; exit 0' INT TERM

url="http://127.0.0.1:${GATEWAY_PORT}"
if $PY -m scripts.infra wait-health "$url/health" 60; then
    echo
    echo "The stack is up: $url   (health: $url/health; Ctrl-C stops everything)"
    echo
else
    echo "The gateway did not become healthy within 60s: see the log above; $url/health says:" >&2
    curl -s "$url/health" >&2 || true
fi
wait $honcho_pid
