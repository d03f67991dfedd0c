# Two commands on a fresh machine: `make run` (demo mode, no account needed) and
# `make test`. Each sets up .venv itself on first use. `make help` lists every target.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# What running needs (the locked runtime set, hashes checked) and, on top of it, what
# developing needs (the test and dev extras, the dashboard's schema check from npm).
RUNTIME := $(VENV)/.runtime
DEV     := $(VENV)/.dev
ARGS   ?= --demo
# Parallel test workers: every test takes its ports from the OS and its files from tmp.
# Four on two cores: most tests wait on processes and sockets, not on the CPU (the
# suite's CPU time is about 1.5 times its wall time at four workers).
WORKERS ?= 4
# The suite starts some 60 exporters and 4 workers: each would compile the package and
# pytest would rewrite every test module again where the environment forbids bytecode
# caches (PYTHONDONTWRITEBYTECODE, as on CI's machines); the caches are gitignored.
TEST_ENV := PYTHONDONTWRITEBYTECODE=

.DEFAULT_GOAL := help
.PHONY: help run dev test quick lint format unit bench bench-micro lock clean

$(RUNTIME): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check --require-hashes -r requirements.lock
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $@

$(DEV): $(RUNTIME) pyproject.toml grafana/schema-check/package-lock.json
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test,dev]'
	@# The dashboard's schema check (tsc and @grafana/schema). Without npm it is skipped
	@# here, and the test that needs it says so (CI installs npm: .ci/tools).
	@if command -v npm >/dev/null; then \
	  npm ci --silent --no-audit --no-fund --prefix grafana/schema-check; \
	else echo "npm not found: the dashboard's schema check will be skipped"; fi
	touch $@

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  make %-8s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

run: $(RUNTIME) ## run the exporter; demo mode unless ARGS says otherwise (ARGS="--config.file config.yaml")
	$(BIN)/latitudesh-exporter $(ARGS)

dev: $(DEV) ## install the development set: test, lint and release tools

test: lint unit ## the formatter check, ruff, mypy --strict and the whole test suite (what CI runs)

lint: $(DEV) ## ruff format --check, ruff check, mypy --strict over the package, tests and benchmarks
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy

format: $(DEV) ## ruff format and ruff check --fix
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

quick: lint $(DEV) ## what `make test` runs but the slow tests (benchmark smoke, e2e, containers, daemons under load)
	$(TEST_ENV) $(BIN)/pytest -n $(WORKERS) -m "not slow"

unit: $(DEV) ## the test suite, on every core
	$(TEST_ENV) $(BIN)/pytest -n $(WORKERS)

# A run writes its tables under benchmarks/out/ (ignored by git); the tracked
# benchmarks/RESULTS.md changes only when asked: make bench OUT=benchmarks/RESULTS.md
OUT ?= benchmarks/out/RESULTS.md
bench: $(DEV) ## the benchmarks: print the tables, write them under benchmarks/out/ (OUT=... elsewhere)
	@mkdir -p $(dir $(OUT))
	$(BIN)/python -m benchmarks --out $(OUT)

# Per-call costs (parse, build, render, join, a scrape's body) with pytest-benchmark, in
# one process on one core: outside the test suite, whose testpaths is tests/.
bench-micro: $(DEV) ## the micro-benchmarks: what one parse, render, join or scrape costs
	$(BIN)/pytest -n 0 benchmarks/micro --benchmark-sort=name --benchmark-time-unit=ms \
	  --benchmark-columns=min,median,max,rounds

lock: $(DEV) ## refresh requirements.lock (the image installs from it, hashes checked)
	$(BIN)/pip-compile --quiet --generate-hashes --strip-extras --allow-unsafe \
	  --no-emit-index-url --no-emit-find-links --output-file requirements.lock pyproject.toml

clean: ## remove the venv and the tools' caches
	rm -rf $(VENV) .mypy_cache .ruff_cache .hypothesis grafana/schema-check/node_modules
