# Quick start:  make demo   (set up, generate the synthetic corpus, train SDETalk on it)
#               make test   (set up, lint, run the whole test suite)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO_DATA ?= data/synthetic
DEMO_RUN ?= runs/synthetic

.PHONY: setup demo test test-quick lint clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/python -m sdetalk_jax.data.synthetic --out $(DEMO_DATA) --seed 0 --preview
	$(BIN)/python -m sdetalk_jax.data check --root $(DEMO_DATA) --quiet
	$(BIN)/python -m sdetalk_jax.train --config configs/synthetic.py --workdir $(DEMO_RUN) \
		--config.data.root=$(DEMO_DATA)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest

test-quick: setup
	$(BIN)/python -m pytest -m "not slow" -x -q

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
