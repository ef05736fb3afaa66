# DTF developer commands. Everything runs from a local virtual environment that `make` creates itself,
# so a fresh machine needs only Python 3.11 and make.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SEEDS ?= 1000
DEMO_DIR ?= ./dtf-data/demo

.PHONY: venv demo test test-fast lint bench raft-sweep clean binary binary-onefile smoke startup-bench

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

# Two pytest processes, a whole test file at a time each (module fixtures start their cluster once).
TEST_JOBS ?= 2
test: $(STAMP) lint
	$(BIN)/python -m pytest -q -n $(TEST_JOBS) --dist loadfile tests

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit tests/raft -x

lint: $(STAMP)
	$(BIN)/ruff check dtf_app plugins tests bench

bench: $(STAMP)
	$(BIN)/python bench/throughput_bench.py
	$(BIN)/python bench/raft_bench.py
	$(BIN)/python bench/store_bench.py

# The frozen executable: dist/dtf/dtf (one-dir). binary-onefile: dist/dtf-onefile. See dtf.spec.
FREEZE_STAMP := $(VENV)/.freeze-installed
$(FREEZE_STAMP): $(STAMP) pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[freeze]'
	touch $(FREEZE_STAMP)

binary: $(FREEZE_STAMP)
	$(BIN)/pyinstaller --noconfirm --log-level WARN dtf.spec

binary-onefile: $(FREEZE_STAMP)
	$(BIN)/pyinstaller --noconfirm --log-level WARN dtf.spec -- --onefile

smoke:
	packaging/smoke.sh

# Start-up and size figures of the frozen build (medians over several runs).
startup-bench: binary binary-onefile
	$(BIN)/python bench/startup.py

raft-sweep: $(STAMP)
	$(BIN)/python -m pytest tests/raft/test_sweep.py -q --raft-seeds=$(SEEDS)

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache
