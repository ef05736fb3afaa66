# DTF developer commands. Everything runs from a local virtual environment that `make` creates itself,
# so a fresh machine needs only Python 3.11 and make.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SEEDS ?= 1000
DEMO_DIR ?= ./dtf-data/demo

.PHONY: venv demo test test-fast lint bench raft-sweep clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,bench,web]'
	touch $(STAMP)

# The main job: an embedded local cluster (coordinator + 2 workers) runs the example workload.
demo: $(STAMP)
	rm -rf $(DEMO_DIR)
	$(BIN)/dtf up --workers 2 --headless --data-dir $(DEMO_DIR) --run-file assets/tasks/demo.json

test: $(STAMP) lint
	$(BIN)/python -m pytest -q tests

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit tests/raft -x

lint: $(STAMP)
	$(BIN)/ruff check dtf_app plugins tests bench

bench: $(STAMP)
	$(BIN)/python bench/throughput_bench.py
	$(BIN)/python bench/raft_bench.py
	$(BIN)/python bench/store_bench.py

raft-sweep: $(STAMP)
	$(BIN)/python -m pytest tests/raft/test_sweep.py -q --raft-seeds=$(SEEDS)

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache
