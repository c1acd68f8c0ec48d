# `make demo` sets up .venv and runs the embedded default pipeline (`make demo-quick`: a toy-size version, ~4 min measured); `make test`
# sets up and runs the tests; `make lint` checks them with ruff.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo demo-quick test lint format system-deps clean

$(BIN)/python:
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) (set PYTHON=...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)

# torch first, pinned: a looser requirement would pull a multi-GB CUDA build on CPU machines.
$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

system-deps:
	@bash scripts/system_deps.sh

setup: $(VENV)/.installed system-deps

demo: setup
	$(BIN)/posttrain demo

# the same stages at toy size (configs/demo-quick): 257 s measured on 2 cores with a fresh cache, target 300 s
demo-quick: setup
	$(BIN)/posttrain demo --quick

test: setup
	$(BIN)/python -m pytest -q -ra --durations=15

# ruff (configured in pyproject.toml): lint and formatting are checked by CI before the tests
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) build *.egg-info
