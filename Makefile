# Two commands for a fresh clone: `make run` (the stack) and `make test` (the suite).
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
MAIL_DIR ?= var/mail
OVERLAY ?= dev
SMS_FILE ?= var/sms/messages.jsonl

.PHONY: run test faults unit integration migrate token dead-letters replay-dead-letters mail sms shell install clean \
	cluster cluster-stop k8s

run: $(STAMP)  ## set up and run the whole stack natively, until Ctrl-C (CLUSTER=1: on a 3-node cluster, 2 of each)
	CLUSTER=$(or $(CLUSTER),0) bash scripts/run.sh

cluster: $(STAMP)  ## start a 3-node RabbitMQ cluster on this machine (ports 5681-5683, data under var/rabbitmq)
	$(PY) -m scripts.rabbitmq_nodes cluster-start

cluster-stop: $(STAMP)  ## stop that cluster (its data stays under var/rabbitmq)
	$(PY) -m scripts.rabbitmq_nodes cluster-stop

test: $(STAMP)  ## set up and run every test: unit, integration, then the fault tests
	$(PY) -m pytest tests/unit tests/stores tests/integration --durations=10
	$(MAKE) --no-print-directory faults

faults: $(STAMP)  ## broker/Postgres restarts, kill -9, poison events: each against a fresh stack
	$(PY) -m pytest tests/faults -s --durations=10

unit: $(STAMP)
	$(PY) -m pytest tests/unit

integration: $(STAMP)
	$(PY) -m pytest tests/integration

migrate: $(STAMP)  ## create the database if missing and migrate it to head
	$(PY) -m scripts.infra ensure-db
	$(PY) -m alembic upgrade head

token: $(STAMP)  ## print a bearer token: make token ROLE=admin | ROLE=customer CUSTOMER_ID=<uuid>
	@$(PY) -m scripts.token --role $(or $(ROLE),admin) $(if $(CUSTOMER_ID),--customer-id $(CUSTOMER_ID))

dead-letters: $(STAMP)  ## list events that failed every retry
	@$(PY) -m scripts.dead_letters list

replay-dead-letters: $(STAMP)  ## send dead letters back to their handlers (after the fix)
	@$(PY) -m scripts.dead_letters replay

mail: $(STAMP)  ## the latest emails the local sink kept (make run without SMTP_HOST): time, to, subject
	@$(PY) -m scripts.mail_sink list --dir $(MAIL_DIR)

sms: $(STAMP)  ## the latest SMS the local sink kept (make run without SMS_API_URL): time, to, body
	@$(PY) -m scripts.sms_sink list --file $(SMS_FILE)

shell: $(STAMP)  ## nameko shell against the running stack
	$(PY) -m common.kit.runner shell

k8s: $(STAMP)  ## print the Kubernetes manifests: make k8s OVERLAY=dev|production (docs/kubernetes.md)
	@test -f ops/k8s/overlays/$(OVERLAY)/kustomization.yaml \
		|| { echo "make k8s OVERLAY=...: one of: $$(ls ops/k8s/overlays | tr "\n" " ")" >&2; exit 2; }
	@kubectl=$(VENV)/bin/kubectl; [ -x $$kubectl ] || kubectl=kubectl; \
		$$kubectl kustomize ops/k8s/overlays/$(OVERLAY)

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[test]"
	touch $(STAMP)

clean:
	rm -rf $(VENV) test-output .pytest_cache *.egg-info

# `bench` is also a directory: without .PHONY make would call the target up to date.
.PHONY: bench
bench: $(STAMP)  ## ours vs the floor and the naive peer, side by side (knobs: bench/README.md)
	$(PY) -m bench.run
