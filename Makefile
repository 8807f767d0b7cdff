PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install browser lint test demo app benchmark clean

# Create .venv and install the package with its test tools; redone when pyproject.toml changes.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# Debian's headless Chromium and its driver for the web tagger's browser test (tests/test_app_browser.py), installed
# with apt (as root, else through sudo) when missing; no browser is downloaded.
browser:
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
		SUDO=$$([ "$$(id -u)" -eq 0 ] || echo sudo); \
		$$SUDO apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium chromium-driver; \
	fi

# ruff, as configured in pyproject.toml [tool.ruff]: the lint rules, then the formatter's check (nothing is changed;
# `ruff check --fix .` and `ruff format .` apply them).
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: $(STAMP) browser
	$(PY) -m pytest -q

demo: $(STAMP)
	$(PY) scripts/demo.py --output-dir runs/demo --asl-control

# The web tagger on the demo model (http://127.0.0.1:7860); `make demo` makes the model.
app: $(STAMP)
	@test -f runs/demo/model/config.json || { echo "runs/demo/model is missing: run 'make demo' first"; exit 1; }
	$(PY) scripts/app.py --model runs/demo/model

benchmark: $(STAMP)
	$(PY) scripts/benchmark.py losses
	$(PY) scripts/benchmark.py train-step
	$(PY) scripts/benchmark.py inference

clean:
	rm -rf runs build dist *.egg-info .pytest_cache
