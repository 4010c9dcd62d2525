# The verbs a newcomer needs. Everything installs into .venv from pyproject.toml.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
# The PostgreSQL half of the test suite runs against this server (set to "off"
# to run the SQLite half only). Every machine of this project has it.
RXLEDGER_TEST_POSTGRES_URL ?= postgresql://postgres@127.0.0.1:5432/postgres
export RXLEDGER_TEST_POSTGRES_URL

.PHONY: install run test lint check bench vectors docs clean

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

install: $(BIN)/.installed ## create .venv and install rxledger with its dev tools

run: install ## init a ledger on the embedded SQLite default (once) and serve the API
	$(BIN)/rxledger init
	$(BIN)/rxledger serve --host $(HOST) --port $(PORT)

test: install ## the whole test suite, SQLite and PostgreSQL, plus lint and types
	$(BIN)/python -m pytest

lint: install ## ruff, formatting, mypy --strict, import contracts
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

check: lint test

vectors: install ## only the shared conformance vectors
	$(BIN)/python -m pytest tests/test_merkle.py tests/test_note.py tests/test_checkpoint.py tests/test_canonical.py

bench: install ## the benchmarks (long; run by hand; figures printed)
	$(BIN)/python bench/append.py
	$(BIN)/python bench/verify.py
	$(BIN)/python bench/proofs.py

docs: ## where the docs are
	@ls docs docs/adr

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
