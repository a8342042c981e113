# Two entry points: `make demo` (the main job on the embedded default data) and `make test`.
# Both create the virtual environment on first use; pip (not uv/poetry) so that the local torch
# wheels are found. torch and torchvision are pinned together: an unpinned torchvision next to a
# different torch silently swaps torch. The hf extra (transformers + accelerate, for
# tests/integrations/test_integrations_hf.py) adds about 40 s and 180 MB to the first install (37 s measured
# adding it to an existing venv, 2 cores, local package index); its tests
# are skipped where it is absent.
PYTHON ?= python3
VENV ?= .venv
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
BIN := $(VENV)/bin

.PHONY: setup demo test test-fast lint bench-loss torchsort clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q $(TORCH_PINS)
	$(BIN)/pip install -q -e '.[vision,tensorboard,dev,hf,trl,lm]' $(TORCH_PINS)
	touch $@

setup: $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/lud demo

# Line coverage of src/lud is measured on every run and the target fails below COV_MIN percent
# (pytest's exit status otherwise: failing tests fail the target too). Code run in child processes
# (the killed `lud` processes of tests/engine/test_faults.py, torchrun workers) is not counted.
COV_MIN ?= 85
test: $(VENV)/.installed
	OMP_NUM_THREADS=2 HF_HUB_OFFLINE=1 $(BIN)/python -m pytest \
		--cov=lud --cov-report=term --cov-fail-under=$(COV_MIN)

# The loss library's tests without the slow ones (compiling, see the `slow` marker in
# pyproject.toml): the quick check while changing a loss. `make test` still runs everything.
test-fast: $(VENV)/.installed
	OMP_NUM_THREADS=2 $(BIN)/python -m pytest -m "not slow" tests/losses/

# ruff, then the import rules of docs/architecture.md (also checked by tests/test_architecture.py,
# so `make test` fails on a layer violation too).
lint: $(VENV)/.installed
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/lint-imports

# Optional O(n log n) soft-rank backend; builds against the venv's torch (no isolated build, which
# would pull another torch and look for nvcc).
torchsort: $(VENV)/.installed
	PATH=$(abspath $(BIN)):/usr/bin:/bin $(BIN)/pip install -q --no-build-isolation --no-cache-dir torchsort==0.1.10

bench-loss: $(VENV)/.installed
	OMP_NUM_THREADS=2 $(BIN)/python benchmarks/loss_speed.py

clean:
	rm -rf $(VENV) runs .pytest_cache
