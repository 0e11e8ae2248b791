# Two commands do all the set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
RUN_STAMP := $(VENV)/.run-installed
TEST_STAMP := $(VENV)/.test-installed

.PHONY: run test test-sqlite test-postgres lint bench bench-runs install

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# Re-installs when pyproject.toml changes, so a pulled dependency bump is never missed.
$(RUN_STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e .
	touch $@

$(TEST_STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@ $(RUN_STAMP)

install: $(RUN_STAMP)

run: $(RUN_STAMP)
	$(PY) manage.py migrate --noinput
	$(PY) manage.py serve --with-agents

lint: $(TEST_STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

# The whole suite, once on SQLite and once on PostgreSQL (pgserver, or CLICKY_CHATS_TEST_PG_DSN).
test: lint test-sqlite test-postgres

test-sqlite: $(TEST_STAMP)
	CLICKY_CHATS_TEST_DB=sqlite $(PY) -m pytest

test-postgres: $(TEST_STAMP)
	CLICKY_CHATS_TEST_DB=postgres $(PY) -m pytest

bench: $(TEST_STAMP)
	$(PY) -m bench.chat_proxy

# The run engine: overhead, first delta, throughput over 1 and 2 agents, writes per answer (~3.5 min quiet).
bench-runs: $(TEST_STAMP)
	$(PY) -m bench.runs
