# make demo  -> set up .venv and run the whole pipeline on the bundled vic_elec data
# make test  -> set up .venv and run the test suite (unit + end-to-end)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# CPU-only machines get the CPU build of torch; with nvidia-smi present, pip follows pyproject's range.
CONSTRAINT := $(if $(shell command -v nvidia-smi 2>/dev/null),,-c constraints/cpu.txt)
DEV_INSTALL := pip install -q $(CONSTRAINT) -e ".[dev]"

.PHONY: setup demo test test-pandas2 lint format clean gpu-wheels gpu-check lock

setup: $(STAMP)

$(STAMP): pyproject.toml constraints/cpu.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m $(DEV_INSTALL)
	touch $(STAMP)

demo: setup
	$(VENV)/bin/lstm-pipeline run --config configs/default.yaml

# the suite's processes are single-threaded (tests pin train.num_threads=1): one worker per core
TEST_WORKERS ?= auto
test: setup
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

# pandas 2, which pyproject admits and the bench's statsforecast pins: the tests that read data, in a venv of their own
PANDAS2_VENV := .venv-pandas2
PANDAS2_TESTS := tests/test_ingest.py tests/test_ingest_stream.py tests/test_accuracy_bench.py tests/test_new_series.py \
	tests/test_compat.py tests/test_bad_inputs.py
$(PANDAS2_VENV)/.installed: pyproject.toml constraints/cpu.txt
	python3 -m venv $(PANDAS2_VENV)
	$(PANDAS2_VENV)/bin/python -m pip install -q --upgrade pip
	$(PANDAS2_VENV)/bin/python -m $(DEV_INSTALL) "pandas<3"
	touch $@

test-pandas2: $(PANDAS2_VENV)/.installed
	$(PANDAS2_VENV)/bin/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile $(PANDAS2_TESTS)

lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: setup
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

# A GPU machine has no package index: the packages its image lacks travel as wheels in .whl/ (git-ignored),
# for its Python 3.12 on x86-64 (the versions this venv runs). bench/gpu_check.sh installs them there.
GPU_WHEELS := datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
gpu-wheels: setup
	$(PY) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
		--platform any -d .whl $(GPU_WHEELS)

# The GPU check's steps, reduced, on this machine's CPU (what a test runs too).
gpu-check: setup
	$(PY) bench/gpu_check.py --device cpu --quick --out runs/gpu_check

# docker/requirements.lock: every package of `.[tensorboard,serve]` for the image (Python 3.12, x86-64 Linux),
# exact versions and hashes, torch at the version the tests run (constraints/cpu.txt).
LOCK_COMMAND := uv pip compile pyproject.toml --extra tensorboard --extra serve --python-version 3.12 \
	--python-platform x86_64-manylinux_2_28 --generate-hashes --constraint constraints/cpu.txt \
	--output-file docker/requirements.lock
lock: setup
	$(PY) -m pip install -q uv
	$(VENV)/bin/$(LOCK_COMMAND)

clean:
	rm -rf runs .pytest_cache
