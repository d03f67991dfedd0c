# Two commands on a fresh machine: `make run` (demo mode, no account needed) and
# `make test`. Each sets up .venv itself on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
ARGS   ?= --demo

.PHONY: run test lint unit bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

## run the exporter; demo mode unless ARGS says otherwise (ARGS="--config.file config.yaml")
run: $(STAMP)
	$(BIN)/latitudesh-exporter $(ARGS)

## lint, type-check and run the whole test suite (what CI runs)
test: lint unit

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest

## benchmarks: prints a table and writes benchmarks/RESULTS.md
bench: $(STAMP)
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
