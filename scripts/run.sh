#!/usr/bin/env bash
# `make run`: database, migrations, the services and the gateway, natively; and, when
# SMTP_HOST is unset, a local SMTP sink that keeps notification emails under var/mail/;
# with RATE_LIMIT and no REDIS_URL, a local redis-server for the rate-limit counters.
# when SMS_API_URL is unset, a local SMS sink (var/sms/); without VAPID_PRIVATE_KEY, a development key.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
export PATH="$PWD/.venv/bin:$PATH"
export GATEWAY_PORT="${GATEWAY_PORT:-8000}"

# RATE_LIMIT without REDIS_URL: the counters go to a Redis on 127.0.0.1:6379, the one there or a
# redis-server of our own (Debian's package; in memory only), started beside the Procfile's processes.
local_redis=0
if [ -n "${RATE_LIMIT:-}" ] && [ -z "${REDIS_URL:-}" ]; then
    export REDIS_URL="redis://127.0.0.1:6379/0"
    if (exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null; then
        echo "RATE_LIMIT is set and REDIS_URL is not: counting in the Redis already on 127.0.0.1:6379."
    elif command -v redis-server >/dev/null 2>&1; then
        local_redis=1
    else
        cat >&2 <<'HELP'

RATE_LIMIT is set, so the gateways count requests in Redis, and REDIS_URL is not set.
Install a local one (Debian/Ubuntu: apt-get install redis-server) and `make run` starts it,
or point REDIS_URL at a running Redis (redis://host:6379/0), then run `make run` again.
HELP
        exit 1
    fi
fi

$PY -m scripts.infra settings || exit 2   # names any bad setting before anything starts
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
    echo "JWT_SECRET is not set: using config.yml's development default '$($PY -m scripts.infra setting JWT_SECRET)' (never in production)."
fi
if [ -z "${CALLER_SIGNING_KEY:-}" ]; then
    key=$($PY -c 'from common.contract.settings import load_settings; print(load_settings().caller_signing_key.get_secret_value())')
    echo "CALLER_SIGNING_KEY is not set: using config.yml's development default '$key' (never in production)."
fi
if [ -z "${WEBHOOK_SECRET_KEY:-}" ]; then
    key=$($PY -c 'from common.contract.settings import load_settings; print(load_settings().webhook_secret_key.get_secret_value())')
    echo "WEBHOOK_SECRET_KEY is not set: using config.yml's development default '$key' (never in production)."
fi

mkdir -p var
cp Procfile var/Procfile.run
procfile=var/Procfile.run

# CLUSTER=1: a 3-node RabbitMQ cluster of our own (scripts/rabbitmq_nodes.py, as `make cluster`),
# quorum queues, and a second instance of every service and of the gateway, each second one
# connecting to another node first and serving its metrics from METRICS_PORT 9200.
# Every process connects as its own RabbitMQ user (scripts/rabbitmq_users.py); AMQP_URI, for
# make shell and the dead-letter tools, is the cluster's operator.
if [ "${CLUSTER:-0}" = "1" ]; then
    cluster_uri=$($PY -m scripts.rabbitmq_nodes cluster-start | sed -n "s/^AMQP_URI='\(.*\)'$/\1/p")
    rotated=$(echo "$cluster_uri" | awk -F';' '{print $2";"$3";"$1}')
    export AMQP_URI="$cluster_uri" AMQP_QUORUM_QUEUES=true MAX_WORKERS="${MAX_WORKERS:-5}"
    $PY -m scripts.rabbitmq_users procfile --uri "$cluster_uri" --second-uri "$rotated" \
        --second-gateway-port $((GATEWAY_PORT + 1)) > "$procfile"
    echo "CLUSTER=1: AMQP_URI=$AMQP_URI (the operator; each process has its own user); two instances of each service; gateways on :$GATEWAY_PORT and :$((GATEWAY_PORT + 1))."
fi

# Without a mail relay the notification emails go to a local sink (scripts/mail_sink.py) on
# 127.0.0.1:MAIL_SINK_PORT, started beside the Procfile's processes; `make mail` lists them.
if [ -z "$($PY -m scripts.infra setting SMTP_HOST)" ]; then
    sink_port="$($PY -m scripts.infra setting MAIL_SINK_PORT)"
    mkdir -p var/mail
    echo "mailsink: python -m scripts.mail_sink serve --port $sink_port --dir var/mail" >> "$procfile"
    echo "SMTP_HOST is not set: emails go to a local sink on 127.0.0.1:$sink_port, kept under var/mail/ (make mail lists them)."
fi

if [ "$local_redis" = "1" ]; then
    mkdir -p var/redis
    echo "redis: redis-server --port 6379 --bind 127.0.0.1 --save '' --appendonly no --dir var/redis" >> "$procfile"
    echo "RATE_LIMIT is set and REDIS_URL is not: counters in a local redis-server on 127.0.0.1:6379 (in memory)."
fi

# Without an SMS provider the SMS go to a local sink speaking Twilio's Messages API
# (scripts/sms_sink.py) on 127.0.0.1:SMS_SINK_PORT, kept in var/sms/messages.jsonl; `make sms` lists them.
if [ -z "$($PY -m scripts.infra setting SMS_API_URL)" ]; then
    sms_port="$($PY -m scripts.infra setting SMS_SINK_PORT)"
    echo "smssink: python -m scripts.sms_sink serve --port $sms_port --file var/sms/messages.jsonl" >> "$procfile"
    echo "SMS_API_URL is not set: SMS go to a local sink on 127.0.0.1:$sms_port, kept in var/sms/ (make sms lists them)."
fi

# Without a VAPID key, a development one is made once under var/ and used for Web Push.
if [ -z "$($PY -m scripts.infra setting VAPID_PRIVATE_KEY)" ]; then
    export VAPID_PRIVATE_KEY="$PWD/var/vapid_private.pem"
    vapid_public="$($PY -m scripts.push_key ensure --file "$VAPID_PRIVATE_KEY")"
    echo "VAPID_PRIVATE_KEY is not set: using the development key var/vapid_private.pem; front ends subscribe with the public key $vapid_public (GET /api/v1/push/vapid-public-key)."
fi

honcho start -f "$procfile" &
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
