# rtsoak: every target creates its own virtual environment first (.venv, rebuilt when pyproject.toml changes).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SCENARIO ?= scenarios/smoke.toml
RUN ?=
ARGS ?=

.PHONY: soak test test-slow report screenshot lint bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

soak: $(VENV)/.installed
	$(BIN)/rtsoak run $(SCENARIO) $(ARGS)

test: $(VENV)/.installed
	$(BIN)/python -m pytest -q $(ARGS)

test-slow: $(VENV)/.installed
	$(BIN)/python -m pytest -q -m slow $(ARGS)

report: $(VENV)/.installed
	@test -n "$(RUN)" || { echo "usage: make report RUN=reports/<run dir>"; exit 2; }
	$(BIN)/rtsoak report $(RUN)

# A screenshot of a run's report in headless chromium (apt-get install chromium), to look at.
screenshot:
	@test -n "$(RUN)" || { echo "usage: make screenshot RUN=reports/<run dir>"; exit 2; }
	chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
	  --disable-background-networking --disable-component-update --disable-sync \
	  --user-data-dir=$$(mktemp -d) --window-size=1200,7000 \
	  --screenshot=$(RUN)/report/screenshot.png file://$(abspath $(RUN))/report/index.html
	@echo "screenshot: $(RUN)/report/screenshot.png"

lint: $(VENV)/.installed
	$(BIN)/ruff check harness tests
	$(BIN)/ruff format --check harness tests

clean:
	rm -rf $(VENV) reports/*/ .pytest_cache .hypothesis build *.egg-info
