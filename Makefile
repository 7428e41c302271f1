# Quick start:  make demo   (set up, generate the synthetic corpus, run the main job)
#               make test   (set up, lint, run the whole test suite)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO_DATA ?= data/synthetic-demo

.PHONY: setup demo test test-quick lint clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/python -m sdetalk_jax.data.synthetic --out $(DEMO_DATA) --seed 0 --preview
	$(BIN)/python -m sdetalk_jax.data check --root $(DEMO_DATA)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest

test-quick: setup
	$(BIN)/python -m pytest -m "not slow" -x -q

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
