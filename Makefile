# energy-worker: `make run` starts the service, `make test` checks it. Both set themselves up.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
# pip shows what it fetches and installs: a first install takes minutes on a Raspberry Pi.
PIP := $(VPY) -m pip install --disable-pip-version-check --progress-bar off
RUN_STAMP := $(VENV)/.run-installed
DEV_STAMP := $(VENV)/.dev-installed

.PHONY: run status simulate redis-cli test check lint types compile bench clean

$(VPY):
	$(PYTHON) -m venv $(VENV)

# What the service needs at run time, and make run's embedded servers: nothing for tests. Then
# the project itself, editable (its code stays in services/), for the console script
# .venv/bin/energy-worker.
$(RUN_STAMP): requirements.txt requirements-run.txt pyproject.toml | $(VPY)
	@echo "make: installing what the service needs into $(VENV) (once; minutes on a Raspberry Pi)"
	$(PIP) -r requirements-run.txt
	$(PIP) --no-deps -e .
	$(VPY) -m compileall -q -o 2 $(VENV)/lib
	touch $@

# The programs run optimized (entrypoint.sh: PYTHONOPTIMIZE=2): compiled ahead, even where the
# environment says not to write bytecode, so no start compiles them again in memory.
compile: $(RUN_STAMP)
	$(VPY) -m compileall -q -o 2 services

# Tests, linters and type checks on top.
$(DEV_STAMP): $(RUN_STAMP) requirements-dev.txt
	@echo "make: installing the tests' and linters' tools into $(VENV) (once)"
	$(PIP) -r requirements-dev.txt
	touch $@

run: $(RUN_STAMP) compile
	PYTHONPATH=services $(VPY) devtools/devrun.py

# The operator's commands against a running `make run` (it finds the servers by itself), e.g.
#   make status    make status ARGS=--json    make simulate ARGS="--meters 1,2 --power 2000,500"
# `make status` shows the report and ends 0 when it could look (1, "needs attention", is said in
# the report, not as make's error); a health check runs .venv/bin/energy-worker status, whose
# exit status is 0, 1 or 2. 2 (could not look) stays an error here too.
status: $(RUN_STAMP)
	@$(VENV)/bin/energy-worker status $(ARGS) || [ $$? -eq 1 ]

simulate: $(RUN_STAMP)
	$(VENV)/bin/energy-worker simulate $(ARGS)

# redis-cli on make run's embedded Redis, with its password; starts it for the command while
# no make run runs, e.g.   make redis-cli ARGS="-n 0 DEL somekey"
redis-cli: $(RUN_STAMP)
	@PYTHONPATH=services $(VPY) devtools/devrun.py redis-cli $(ARGS)

# The tests keep their bytecode even where the environment says not to write any (`make clean`
# removes it): pytest's rewritten test modules, and the sources of the hundreds of programs the
# tests start. Else every pytest worker compiles the tests again (4.6 s of CPU each) and every
# program start its sources.
PYTEST := env -u PYTHONDONTWRITEBYTECODE $(VPY) -m pytest

# Everything: lint, types, and every test (processes, supervisord, the entrypoint, make run).
test: $(DEV_STAMP) lint types compile
	$(PYTEST)

# Feedback in seconds: lint, types and the tests that need no process of their own, less those
# marked slow (they wait seconds on real time: leases, partitions, commit intervals, a lock's
# wait; or run seconds of work). `make test` runs them all.
check: $(DEV_STAMP) lint types
	$(PYTEST) -m "not processes and not slow" -q

lint: $(DEV_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

types: $(DEV_STAMP)
	$(VENV)/bin/mypy

bench: $(DEV_STAMP) compile
	$(VPY) bench/bench.py

# Everything a build or a run made: the venv, make run's data, the editable install's egg-info,
# the bytecode compiled ahead, the tools' caches.
clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache .hypothesis .mypy_cache services/*.egg-info build
	find services devtools bench tests -name __pycache__ -type d -prune -exec rm -rf {} +
