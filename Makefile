# The first commands: `make install`, then `make demo` or `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Prefect, pinned, in a venv of its own: the read-back test runs Prefect's
# code there, so Prefect never constrains the worker's dependencies.
PREFECT_VENV ?= .venv-prefect
PREFECT_REQUIREMENTS := tests/prefect_side/requirements.txt
PREFECT_LOCK := tests/prefect_side/requirements.lock
SOURCES := worker schemas tests
# uv installs exactly what uv.lock (and the Prefect lock) pin; it lives in a
# venv of its own, pinned too.
UV_VERSION := 0.13.8
UV_VENV := .venv-uv
UV := UV_PYTHON_DOWNLOADS=never $(UV_VENV)/bin/uv

.DEFAULT_GOAL := help

.PHONY: help
help: ## Show the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

# The machine's own tools are checked before anything is made, so a missing one
# stops the first command within seconds, with how to get it.
.PHONY: prerequisites
prerequisites: ## Check the tools the machine must have: Python 3.11+, a JDK 17+, PostgreSQL 15+, promtool
	@$(PYTHON) worker/devtools/prerequisites.py

$(UV_VENV)/bin/uv:
	$(PYTHON) -m venv $(UV_VENV)
	$(UV_VENV)/bin/pip install -q uv==$(UV_VERSION)

$(BIN)/persister: pyproject.toml uv.lock $(UV_VENV)/bin/uv
	UV_PROJECT_ENVIRONMENT=$(VENV) $(UV) sync --compile-bytecode --locked --extra dev --python $(PYTHON) -q
	@touch $@

# Lint and unit tests need only the venv: no outside tool.
.PHONY: venv
venv: $(BIN)/persister ## Create .venv with exactly the locked versions (enough for lint and unit-test)

.PHONY: install
install: prerequisites $(BIN)/persister ## Check the prerequisites; create .venv with exactly the locked versions; fetch the Kafka jars
	$(BIN)/python -c 'from worker.devtools.stack import kafka_libs; print("kafka jars in", kafka_libs())'

.PHONY: lock
lock: $(UV_VENV)/bin/uv ## Upgrade the locks to the newest versions pyproject.toml allows
	$(UV) lock --upgrade --python $(PYTHON)
	$(UV) pip compile -q --upgrade --python-version 3.11 $(PREFECT_REQUIREMENTS) -o $(PREFECT_LOCK)
	( sed -n '1,2p' compose/constraints.txt; $(UV) export --frozen --no-dev --no-hashes \
	  --no-emit-project --no-annotate --no-header ) > compose/constraints.new
	mv compose/constraints.new compose/constraints.txt

$(PREFECT_VENV)/installed: $(PREFECT_LOCK) $(UV_VENV)/bin/uv
	$(UV) venv -q --allow-existing --python $(PYTHON) $(PREFECT_VENV)
	$(UV) pip sync -q --compile-bytecode --python $(PREFECT_VENV)/bin/python $(PREFECT_LOCK)
	@touch $@

.PHONY: prefect-venv
prefect-venv: $(PREFECT_VENV)/installed ## Create .venv-prefect with the pinned Prefect (its code and its server, for the tests)

.PHONY: format
format: venv ## Format the code
	$(BIN)/ruff format $(SOURCES)
	$(BIN)/ruff check --fix $(SOURCES)

.PHONY: lint
lint: venv ## ruff and mypy --strict
	$(BIN)/ruff check $(SOURCES)
	$(BIN)/ruff format --check $(SOURCES)
	$(BIN)/mypy

.PHONY: unit-test
unit-test: venv ## Tests without I/O
	$(BIN)/pytest -m "not integration"

.PHONY: integration-test
integration-test: install prefect-venv ## Tests against a real Kafka broker and PostgreSQL server
	$(BIN)/pytest -m integration

.PHONY: test
test: install lint prefect-venv ## Lint, unit and integration tests (all but the cluster and silent-network tests)
	$(BIN)/pytest -m "not cluster and not faults"

.PHONY: test-faults
test-faults: install ## Networks to PostgreSQL or Kafka gone silent mid-run, and a database failover (about 7 minutes)
	$(BIN)/pytest -m faults

.PHONY: test-cluster
test-cluster: install ## The longest tests on a three-broker cluster: rolling restart, scaling, churn
	$(BIN)/pytest -m cluster

.PHONY: bench
bench: install ## Benchmark side by side: ceilings, previous schema, naive baseline, 1 and 2 workers (PRELOAD=4000000: also on stored events)
	UV_PROJECT_ENVIRONMENT=$(VENV) $(UV) sync --compile-bytecode --locked --extra dev --extra bench --python $(PYTHON) -q
	$(BIN)/python -m worker.devtools.bench --events $(or $(EVENTS),200000) --preload $(or $(PRELOAD),0) --out bench-results

.PHONY: profile
profile: install ## The write path's CPU per event, step by step (EVENTS=file, one message per line; DATABASE_URL=migrated database: adds the COPY)
	$(BIN)/python -m worker.devtools.profile $(if $(EVENTS),--events $(EVENTS)) $(if $(DATABASE_URL),--database-url $(DATABASE_URL))

.PHONY: bench-retention
bench-retention: install ## Retention: drop a day of expired events (EXPIRED, default 5000000) while a worker ingests
	UV_PROJECT_ENVIRONMENT=$(VENV) $(UV) sync --compile-bytecode --locked --extra dev --extra bench --python $(PYTHON) -q
	$(BIN)/python -m worker.devtools.bench.retention --expired $(or $(EXPIRED),5000000) --out bench-results

.PHONY: bench-trim
bench-trim: install ## Retention: trim the day straddling the cutoff in steps, batches from where the last ended vs from the oldest row; not in CI
	UV_PROJECT_ENVIRONMENT=$(VENV) $(UV) sync --compile-bytecode --locked --extra dev --extra bench --python $(PYTHON) -q
	$(BIN)/python -m worker.devtools.bench.trim_steps --events $(or $(EVENTS),2500000) --out bench-results

.PHONY: bench-growth
bench-growth: install ## Write speed as the tables fill to TARGET events (default 10000000), both schemas; not in CI
	UV_PROJECT_ENVIRONMENT=$(VENV) $(UV) sync --compile-bytecode --locked --extra dev --extra bench --python $(PYTHON) -q
	$(BIN)/python -m worker.devtools.bench.growth --target $(or $(TARGET),10000000) --minutes $(or $(MINUTES),0) --out bench-results

SIZES ?= 1000000,10000000

.PHONY: bench-prefect-read
bench-prefect-read: install prefect-venv ## A real Prefect server's event feed and count by name, on events the worker wrote beside it and on events Prefect wrote (SIZES=1000000,10000000); not in CI
	$(BIN)/python -m worker.devtools.bench.prefect_read --sizes $(SIZES) --out bench-results

.PHONY: soak
soak: install ## A long run with faults on a schedule (MINUTES=30, BROKERS=3); report in soak-results/
	UV_PROJECT_ENVIRONMENT=$(VENV) $(UV) sync --compile-bytecode --locked --extra dev --extra bench --python $(PYTHON) -q
	$(BIN)/python -m tests.soak --minutes $(or $(MINUTES),30) --brokers $(or $(BROKERS),3) --out soak-results

.PHONY: demo
demo: install ## Run it end to end on a local stack
	$(BIN)/python -m worker.devtools.demo

.PHONY: demo-prefect
demo-prefect: install prefect-venv ## A real Prefect server on Kafka: a flow run's events through the worker, read back through Prefect's API
	$(BIN)/python -m worker.devtools.demo_prefect

.PHONY: all
all: test
