# rtsoak: every target creates its own virtual environment first (.venv, rebuilt when pyproject.toml changes).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SCENARIO ?= scenarios/smoke.toml
RUN ?=
ARGS ?=
# `make image`: the name and tag it builds (IMAGE=registry.example.com/team/rtsoak to push).
IMAGE ?= rtsoak
TAG ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
PYTHON_IMAGE ?=
# `make lint` validates deploy/kubernetes/*.yaml against this Kubernetes version's schemas.
K8S_VERSION ?= 1.33.0

.PHONY: soak test test-slow report screenshot lint image bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,lint]'
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

# Every benchmark of bench/RESULTS.md, in one go (about 55 minutes on 2 cores; quiet machine
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
	tmp=$$(mktemp -d) && $(BIN)/python bench/load_10m.py night $$tmp; rc=$$?; rm -rf $$tmp; exit $$rc
	$(BIN)/python bench/proxy_overhead.py
	$(BIN)/python bench/chain.py

# Python by ruff; the workflows by actionlint; the manifests by kubernetes-validate (strict:
# an unknown field fails); the Dockerfile by hadolint. All come from the `lint` extra.
lint: $(VENV)/.installed
	$(BIN)/ruff check harness tests
	$(BIN)/ruff format --check harness tests
	$(BIN)/actionlint .github/workflows/*.yml
	$(BIN)/kubernetes-validate --strict --kubernetes-version $(K8S_VERSION) deploy/kubernetes/*.yaml
	$(BIN)/hadolint Dockerfile

# The image of Dockerfile, tagged $(IMAGE):$(TAG) and $(IMAGE):dev (the manifests' reference).
# Needs docker or podman with a running engine; says so and exits 2 without one.
image:
	@tool=$$(command -v docker || command -v podman) || { \
	  echo "make image: no container tool (docker or podman) on PATH; build where one runs" >&2; \
	  exit 2; }; \
	$$tool info >/dev/null 2>&1 || { \
	  echo "make image: $$tool is installed but reaches no container engine ($$tool info fails);" \
	    "start one (dockerd, Docker Desktop, podman machine) or build elsewhere" >&2; exit 2; }; \
	set -x; $$tool build --build-arg REVISION=$$(git rev-parse HEAD 2>/dev/null || echo unknown) \
	  $(if $(PYTHON_IMAGE),--build-arg PYTHON_IMAGE=$(PYTHON_IMAGE)) \
	  -t $(IMAGE):$(TAG) -t $(IMAGE):dev .

clean:
	rm -rf $(VENV) reports/*/ runs/ .pytest_cache .hypothesis build *.egg-info
