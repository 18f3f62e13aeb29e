# PingMe: `make dev` runs the system locally, `make test` runs every test against real servers.
PYTHON ?= python3
SERVICES := deploy/local/services.sh

.PHONY: help install services dev stop status test test-unit test-integration config-table

help:
	@echo "make dev        start Kafka, Redis, the functions and the gateway (SQLite); prints the URL"
	@echo "make stop       stop everything make dev or make services started"
	@echo "make test       start the real servers if needed and run the whole test suite"
	@echo "make test-unit  the pure unit tests only (no servers)"

install:
	$(PYTHON) -m pip install -q -r requirements.txt
	bash $(SERVICES) install

services:
	bash $(SERVICES) start

dev: services
	bash deploy/local/dev.sh start

stop:
	bash deploy/local/dev.sh stop
	bash $(SERVICES) stop

status:
	bash deploy/local/dev.sh status
	bash $(SERVICES) status

test: services
	$(PYTHON) -m pytest -q tests

test-unit:
	$(PYTHON) -m pytest -q tests/unit

test-integration: services
	$(PYTHON) -m pytest -q tests/integration

config-table:
	@$(PYTHON) -m common.config --markdown
