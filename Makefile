# make demo  -> set up .venv and run the whole pipeline on the bundled vic_elec data
# make test  -> set up .venv and run the test suite (unit + end-to-end)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# CPU-only machines get the CPU build of torch; with nvidia-smi present, pip follows pyproject's range.
CONSTRAINT := $(if $(shell command -v nvidia-smi 2>/dev/null),,-c constraints/cpu.txt)

.PHONY: setup demo test lint format clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints/cpu.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(CONSTRAINT) -e ".[dev]"
	touch $(STAMP)

demo: setup
	$(VENV)/bin/lstm-pipeline run --config configs/default.yaml

# the suite's processes are single-threaded (tests pin train.num_threads=1): one worker per core
TEST_WORKERS ?= auto
test: setup
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: setup
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

clean:
	rm -rf runs .pytest_cache
