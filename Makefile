# The README's commands: `make smoke`, `make run`, `make test`. Each sets up .venv first (once).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
ARGS ?=
# a run needs the kit and pandas (load_run/load_study return DataFrames); the tests also cover the Hydra
# launchers, TensorBoard and W&B (offline), so `make test` adds those extras
RUN_EXTRAS ?= pandas
TEST_EXTRAS ?= pandas,dev,cluster,tensorboard,wandb
# the versions the published numbers were made with (`make constraints` refreshes it from .venv)
CONSTRAINTS ?= constraints.txt
# e.g. https://download.pytorch.org/whl/cpu: torch's CPU wheels, where that index is reachable (PyPI has none)
TORCH_INDEX ?=
PIP := $(PY) -m pip install -q -c $(CONSTRAINTS)

.PHONY: setup setup-test smoke run test test-fast lint bench constraints clean

# Re-install only when the project's dependencies or the tested versions change.
$(VENV)/.installed: pyproject.toml $(CONSTRAINTS)
	@$(PYTHON) -c 'import sys; v = sys.version_info; sys.exit(0 if v >= (3, 10) else f"imgcollapse needs Python >= 3.10; $(PYTHON) is {v.major}.{v.minor}: run make PYTHON=python3.11 (or any 3.10+)")'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(if $(TORCH_INDEX),$(PIP) torch torchvision --index-url $(TORCH_INDEX))
	$(PIP) -e '.[$(RUN_EXTRAS)]'
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) -e '.[$(TEST_EXTRAS)]'
	touch $@

setup: $(VENV)/.installed
setup-test: $(VENV)/.installed-test

# 3 tiny generations of the default DDPM (its time on 2 cores: the README's first table)
smoke: setup
	$(PY) -m imgcollapse.run debug=smoke $(ARGS)

run: setup
	$(PY) -m imgcollapse.run $(ARGS)

lint: setup-test
	$(VENV)/bin/ruff check .

# two workers on the two cores, one torch thread each (tests/conftest.py): 2x faster than one worker with two
test: lint
	$(VENV)/bin/pytest -q -n 2 --durations=10 $(ARGS)

# the fast tier: pure functions, configs and checks, no chain (tests marked `slow` left out): about a minute
test-fast: setup-test
	$(VENV)/bin/pytest -q -n 2 -m "not slow" $(ARGS)

bench: setup
	$(PY) scripts/bench.py --out bench.json $(ARGS)

# the tested versions of everything the kit and its extras need (scripts/constraints.py)
constraints: test
	$(PY) scripts/constraints.py --out $(CONSTRAINTS)

clean:
	rm -rf .pytest_cache .ruff_cache
