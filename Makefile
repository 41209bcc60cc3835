# vmshift: `make demo` runs the demo on the embedded control plane; `make test` runs every check.
# Both set up what they need on a fresh machine: a virtualenv in .venv and the control plane's
# binaries and Alertmanager (the webhook tests' peer), built once from the Go module proxy into
# ~/.cache/vmshift/ (10-20 min cold, seconds warm).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: all venv controlplane alertmanager lint crds crds-check test unit demo bench clean

all: test

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

venv: $(BIN)/.installed

controlplane: venv
	$(BIN)/vmshift dev build

# Prometheus Alertmanager, the real peer of the webhook receiver's end-to-end test (cached, built once)
alertmanager: venv
	$(BIN)/vmshift dev alertmanager

lint: venv
	$(BIN)/ruff check operator tests bench
	$(BIN)/mypy

crds: venv
	$(BIN)/vmshift crds --write

crds-check: venv
	$(BIN)/vmshift crds --check

test: venv controlplane alertmanager lint crds-check
	$(BIN)/pytest $(PYTEST_ARGS)

unit: venv
	$(BIN)/pytest -m "not e2e" $(PYTEST_ARGS)

demo: venv controlplane
	$(BIN)/vmshift demo

bench: venv controlplane
	$(BIN)/python bench/migration.py
	$(BIN)/python bench/drain.py
	$(BIN)/python bench/scale.py

chaos: venv controlplane
	$(BIN)/python bench/chaos.py --trials 500 --seed 1 --lanes 3

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
