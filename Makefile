# The first commands: `make install`, then `make demo` or `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Prefect, pinned, in a venv of its own: the read-back test runs Prefect's
# code there, so Prefect never constrains the worker's dependencies.
PREFECT_VENV ?= .venv-prefect
PREFECT_REQUIREMENTS := tests/prefect_side/requirements.txt
SOURCES := worker schemas tests

.DEFAULT_GOAL := help

.PHONY: help
help: ## Show the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

$(BIN)/persister: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

.PHONY: install
install: $(BIN)/persister ## Create .venv with the package and its dev tools; fetch the Kafka jars
	$(BIN)/python -c 'from worker.stack import kafka_libs; print("kafka jars in", kafka_libs())'

$(PREFECT_VENV)/installed: $(PREFECT_REQUIREMENTS)
	$(PYTHON) -m venv $(PREFECT_VENV)
	$(PREFECT_VENV)/bin/pip install -q --upgrade pip
	$(PREFECT_VENV)/bin/pip install -q -r $(PREFECT_REQUIREMENTS)
	@touch $@

.PHONY: prefect-venv
prefect-venv: $(PREFECT_VENV)/installed ## Create .venv-prefect with the pinned Prefect (for the read-back test)

.PHONY: format
format: install ## Format the code
	$(BIN)/ruff format $(SOURCES)
	$(BIN)/ruff check --fix $(SOURCES)

.PHONY: lint
lint: install ## ruff and mypy --strict
	$(BIN)/ruff check $(SOURCES)
	$(BIN)/ruff format --check $(SOURCES)
	$(BIN)/mypy

.PHONY: unit-test
unit-test: install ## Tests without I/O
	$(BIN)/pytest -m "not integration"

.PHONY: integration-test
integration-test: install prefect-venv ## Tests against a real Kafka broker and PostgreSQL server
	$(BIN)/pytest -m integration

.PHONY: test
test: lint prefect-venv ## Everything: lint, unit and integration tests
	$(BIN)/pytest

.PHONY: bench
bench: install ## Benchmark side by side: consume and COPY ceilings, naive baseline, 1 and 2 workers
	$(BIN)/pip install -q -e '.[dev,bench]'
	$(BIN)/python -m worker.bench --events $(or $(EVENTS),200000) --out bench-results

.PHONY: demo
demo: install ## Run it end to end on a local stack
	$(BIN)/python -m worker.demo

.PHONY: all
all: test
