# Two commands on a fresh machine: `make run` (demo mode, no account needed) and
# `make test`. Each sets up .venv itself on first use. `make help` lists every target.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
ARGS   ?= --demo
# Parallel test workers: every test takes its ports from the OS and its files from tmp.
WORKERS ?= auto

.DEFAULT_GOAL := help
.PHONY: help run test quick lint format unit bench lock clean

$(STAMP): pyproject.toml grafana/schema-check/package-lock.json
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,dev]'
	@# The dashboard's schema check (tsc and @grafana/schema); skipped locally without npm.
	-command -v npm >/dev/null && npm ci --silent --no-audit --no-fund --prefix grafana/schema-check
	touch $(STAMP)

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  make %-8s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

run: $(STAMP) ## run the exporter; demo mode unless ARGS says otherwise (ARGS="--config.file config.yaml")
	$(BIN)/latitudesh-exporter $(ARGS)

test: lint unit ## the formatter check, ruff, mypy --strict and the whole test suite (what CI runs)

lint: $(STAMP) ## ruff format --check, ruff check, mypy --strict over the package, tests and benchmarks
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy

format: $(STAMP) ## ruff format and ruff check --fix
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

quick: lint $(STAMP) ## what `make test` runs but the slow tests (benchmark smoke, e2e, containers, daemons under load)
	$(BIN)/pytest -n $(WORKERS) -m "not slow"

unit: $(STAMP) ## the test suite, on every core
	$(BIN)/pytest -n $(WORKERS)

bench: $(STAMP) ## the benchmarks: prints tables and writes benchmarks/RESULTS.md
	$(BIN)/python -m benchmarks

lock: $(STAMP) ## refresh requirements.lock (the image installs from it, hashes checked)
	$(BIN)/pip-compile --quiet --generate-hashes --strip-extras --allow-unsafe \
	  --no-emit-index-url --no-emit-find-links --output-file requirements.lock pyproject.toml

clean: ## remove the venv and the tools' caches
	rm -rf $(VENV) .mypy_cache .ruff_cache .hypothesis grafana/schema-check/node_modules
