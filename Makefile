# Quick start:  make demo   (set up, generate the synthetic corpus, train SDETalk on it)
#               make test   (set up, lint, run the whole test suite)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
DEMO_DATA ?= data/synthetic
DEMO_RUN ?= runs/synthetic

.PHONY: setup demo test test-quick lint clean viewer-setup

$(VENV)/.installed: pyproject.toml
	@# Rendering needs an EGL library and Mesa's software OpenGL driver (no GPU or display needed).
	@ldconfig -p | grep -q 'libEGL.so.1' && ls /usr/lib/*/dri/swrast_dri.so >/dev/null 2>&1 || \
		{ echo "installing Mesa EGL (libegl1 libgl1-mesa-dri) for headless rendering"; \
		  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq libegl1 libgl1-mesa-dri; }
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
	$(BIN)/python -m sdetalk_jax.evaluate --workdir $(DEMO_RUN) --split test-a --plots --force
	$(BIN)/python -m sdetalk_jax.animate --workdir $(DEMO_RUN) --audio $(DEMO_DATA)/wav/F2_e37.wav \
		--subject F2 --samples 2 --seed 0 --out $(DEMO_RUN)/animations --force

# The glTF viewer's tools (docs/animate.md): three.js, the Khronos glTF validator and playwright-core
# from npm (viewer/package-lock.json), and Debian's Chromium for the headless viewer test. Without
# them the tests marked `node` are skipped with the reason; CI (.ci/run) installs them first.
viewer-setup: viewer/node_modules/.installed

viewer/node_modules/.installed: viewer/package.json viewer/package-lock.json
	@command -v node >/dev/null && command -v npm >/dev/null || \
		{ echo "installing Node.js and npm"; $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq nodejs npm; }
	@[ -x /usr/bin/chromium ] || \
		{ echo "installing Chromium (headless viewer test)"; $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium; }
	cd viewer && npm ci --no-audit --no-fund --loglevel=error
	touch $@

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Whole test files go to two workers (module fixtures such as a trained run are built once); the
# 15 slowest tests are listed at the end, to keep the suite well inside CI's 15 minutes.
test: lint
	$(BIN)/python -m pytest -n 2 --dist loadfile --durations=15

test-quick: setup
	$(BIN)/python -m pytest -m "not slow" -x -q

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
