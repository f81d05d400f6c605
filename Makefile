# Everyday tasks; `make ci` is what CI runs (.ci/run: fresh venv, private broker, tests).
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install test lint format broker broker-stop broker-status topics ci

install:
	python3 -m venv $(VENV)
	$(PY) -m pip install -e ".[dev,rocksdb]"

test:
	$(VENV)/bin/pytest -q

lint:
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format:
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

broker:
	$(VENV)/bin/faultstream broker start

broker-stop:
	$(VENV)/bin/faultstream broker stop

broker-status:
	$(VENV)/bin/faultstream broker status

topics:
	$(VENV)/bin/faultstream topics create

ci:
	.ci/run
