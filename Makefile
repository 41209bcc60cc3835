# vmshift: `make demo` runs the demo on the embedded control plane; `make test` runs every check.
# Both set up what they need on a fresh machine: a virtualenv in .venv and the control plane's
# binaries and Alertmanager (the webhook tests' peer), built once from the Go module proxy into
# ~/.cache/vmshift/ (10-20 min cold, seconds warm).
# `make test` also builds and runs the image (tests marked `image`), so it needs a running Docker.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: all venv controlplane alertmanager promtool docs docs-check image lint crds crds-check test unit demo bench clean

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

# Prometheus' promtool: checks and unit-tests manifests/monitoring/prometheusrule.yaml (cached, built once)
promtool: venv
	$(BIN)/vmshift dev promtool

# docs/api.md and the Argo CD health ConfigMap, generated from the code (a test fails on drift)
docs: venv
	$(BIN)/vmshift docs --write

docs-check: venv
	$(BIN)/vmshift docs

# The one image of the operator and the agents: vmshift:<version> and vmshift:dev. Needs Docker and,
# the first time, mmdebstrap (the Debian base is made locally); cached in ~/.cache/vmshift/image.
image: venv
	$(BIN)/vmshift dev image

lint: venv
	$(BIN)/ruff check operator tests bench
	$(BIN)/mypy

crds: venv
	$(BIN)/vmshift crds --write

crds-check: venv
	$(BIN)/vmshift crds --check

test: venv controlplane alertmanager promtool lint crds-check docs-check
	$(BIN)/pytest $(PYTEST_ARGS)

unit: venv
	$(BIN)/pytest -m "not e2e and not image" $(PYTEST_ARGS)

demo: venv controlplane
	$(BIN)/vmshift demo

bench: venv controlplane
	$(BIN)/python bench/migration.py
	$(BIN)/python bench/drain.py
	$(BIN)/python bench/scale.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
