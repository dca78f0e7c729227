# energy-worker: `make run` starts the service, `make test` checks it. Both set themselves up.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test lint bench clean

$(STAMP): requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $(STAMP)

run: $(STAMP)
	PYTHONPATH=services $(VPY) -m energy_worker.devrun

test: $(STAMP) lint
	$(VPY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: $(STAMP)
	$(VPY) bench/bench.py

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache .hypothesis
