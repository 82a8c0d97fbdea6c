# Two commands on a fresh machine: `make demo` and `make test`. Everything else is optional.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: setup services demo test test-fast lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[test]"
	@rm -f $(VENV)/.installed-*; touch $@

services: ## Redis (and PostgreSQL for the tests): found, or started, or a clear message.
	@scripts/services.sh

demo: setup ## Migrate the SQLite job store, start a worker, run a job of every kind, print results.
	@CONVEYOR_REQUIRE_POSTGRES=0 scripts/services.sh
	$(PY) scripts/demo.py

TEST_PROCESSES ?= 2

test: setup services ## The whole suite against real Redis, SQLite, PostgreSQL and workers.
	$(PY) -m pytest -q -n $(TEST_PROCESSES) --dist loadfile

test-fast: setup ## Skip the slow chaos and load tests.
	$(PY) -m pytest -q -n $(TEST_PROCESSES) --dist loadfile -m "not slow"

lint: setup
	$(VENV)/bin/ruff check .

bench: setup services
	$(PY) bench/throughput.py

clean:
	rm -rf $(VENV) conveyor.db* .pytest_cache var
