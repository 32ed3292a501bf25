# The two commands of the README: `make run` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
ARGS ?=
# the tests cover the Hydra launchers, TensorBoard and W&B (offline), so the set-up installs those extras too
EXTRAS ?= dev,cluster,tensorboard,wandb

.PHONY: setup run test lint bench clean

# Re-install only when the project's dependencies change.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[$(EXTRAS)]'
	touch $@

setup: $(VENV)/.installed

run: setup
	$(PY) -m imgcollapse.run $(ARGS)

lint: setup
	$(VENV)/bin/ruff check .

# two workers on the two cores, one torch thread each (tests/conftest.py): 2x faster than one worker with two
test: lint
	$(VENV)/bin/pytest -q -n 2 $(ARGS)

bench: setup
	$(PY) scripts/bench.py --out bench.json $(ARGS)

clean:
	rm -rf .pytest_cache .ruff_cache
