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

# Every benchmark of bench/RESULTS.md, in one go (about 45 minutes on 2 cores; quiet machine
# please: capacity re-measures runs another process disturbed). Locust, the capacity peer,
# lives in its own environment, bench/.venv-peer, created by bench/capacity.py on first use:
# nothing bench-only goes into .venv. Results: bench/capacity.json and the printed lines.
bench: $(VENV)/.installed
	$(BIN)/python bench/capacity.py $(ARGS)
	$(BIN)/python bench/ceiling_features.py
	$(BIN)/python bench/fidelity.py
	$(BIN)/python bench/server_appends.py
	$(BIN)/python bench/server_appends.py --vad
	$(BIN)/python bench/recorder_overhead.py
	tmp=$$(mktemp -d) && $(BIN)/python bench/load_10m.py all $$tmp/run; rc=$$?; rm -rf $$tmp; exit $$rc
	$(BIN)/python bench/proxy_overhead.py

lint: $(VENV)/.installed
	$(BIN)/ruff check harness tests
	$(BIN)/ruff format --check harness tests

clean:
	rm -rf $(VENV) reports/*/ runs/ .pytest_cache .hypothesis build *.egg-info
