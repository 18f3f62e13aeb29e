# PingMe: `make dev` runs the system locally, `make test` runs every test against real servers.
SERVICES := deploy/local/services.sh
# Every command runs in the project's own virtualenv (Debian's python3 refuses pip installs, PEP
# 668); BASE_PYTHON makes it. Exported, so the scripts start the servers' checks, the functions and
# the gateway with it too.
BASE_PYTHON ?= python3
VENV := .state/venv
PYTHON := $(VENV)/bin/python
export PYTHON BASE_PYTHON

.PHONY: help install deps services dev bench-dev stop status test test-unit test-integration test-cluster config-table

help:
	@echo "make dev        start Kafka, Redis, the functions and the gateway (SQLite); prints the web client's URL"
	@echo "make stop       stop everything make dev or make services started"
	@echo "make test       start the real servers if needed and run the whole test suite"
	@echo "make test-unit  the pure unit tests only (no servers)"
	@echo "make bench-dev  the system as benchmarked (MariaDB, fast password hashing): docs/BENCHMARKS.md"
	@echo "make test-cluster  KEDA autoscaling on a real one-node Kubernetes (deploy/local/cluster.sh): docs/DEPLOY.md"

install: deps
	bash $(SERVICES) install

# The Python packages, installed when missing or when a requirements file changed since the last
# install (a fresh clone needs nothing installed by hand before `make dev` or `make test`).
DEPS_STAMP := .state/deps.stamp
deps: $(DEPS_STAMP)
$(VENV)/pyvenv.cfg:
	bash $(SERVICES) venv $(VENV)
$(DEPS_STAMP): requirements.txt requirements-bench.txt requirements-test.txt $(VENV)/pyvenv.cfg
	$(PYTHON) -m pip install -q --disable-pip-version-check -r requirements.txt -r requirements-bench.txt -r requirements-test.txt
	@mkdir -p $(@D) && touch $@

services: deps
	bash $(SERVICES) start

dev: deps services
	bash deploy/local/dev.sh start

# The system as docs/BENCHMARKS.md measures it: MariaDB instead of SQLite, cheap password hashing so
# registering thousands of load users is quick, room for 25,000 sockets, no rate limits (thousands
# of users from one address, each sending fast). Never for production.
bench-dev: deps services
	eval "$$(bash $(SERVICES) env)" && DB_ENGINE=mysql PASSWORD_ITERATIONS=1000 WORKER_CONNECTIONS=25000 RATE_LIMIT_ENABLED=false \
		bash deploy/local/dev.sh start

stop:
	bash deploy/local/dev.sh stop
	bash $(SERVICES) stop

status:
	bash deploy/local/dev.sh status
	bash $(SERVICES) status

test: deps services
	$(PYTHON) -m pytest -q tests

test-unit: deps
	$(PYTHON) -m pytest -q tests/unit

test-integration: deps services
	$(PYTHON) -m pytest -q tests/integration

# The autoscaling tests on a local one-node Kubernetes with KEDA (deploy/local/cluster.sh starts it if
# needed and the tests stop it again): not part of `make test` (docs/DEPLOY.md has the costs).
test-cluster: deps services
	$(PYTHON) -m pytest -q -m cluster tests/cluster

config-table:
	@$(PYTHON) -m common.config --markdown
