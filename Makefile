# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RUN_ID ?= $(shell date +%Y%m%d-%H%M%S)
DEMO_DATA ?= data/demo

.PHONY: demo test test-all lint bench clean browser pretrained

SHELL := bash
.SHELLFLAGS := -o pipefail -c
# This machine's global pip config lists local index folders (file:///opt/pypi*/simple) that hold only some
# projects, and pip warns "Location '...' is ignored" for each other project (83 lines on a fresh install here).
# That is the machine, not the project: exactly those lines are dropped, the rest of pip's output is kept,
# and pipefail keeps pip's exit status.
PIP_MACHINE_NOISE := { grep -v "^WARNING: Location 'file:///.*' is ignored: it is neither a file nor a directory.$$" || true; }

$(STAMP): pyproject.toml
	@echo "setting up $(VENV): $(PYTHON) -m venv, pip install -e '.[test]'"
	@$(PYTHON) -m venv $(VENV)
	@$(BIN)/pip install --quiet --upgrade pip 2>&1 | $(PIP_MACHINE_NOISE)
	@$(BIN)/pip install --quiet -e '.[test]' 2>&1 | $(PIP_MACHINE_NOISE)
	@touch $(STAMP)

## the main job: demo data -> search -> leaderboard -> export of the best model with its report (its last
## lines say what was found and where the model card and report.html are)
demo: $(STAMP)
	@test -f $(DEMO_DATA)/labels.csv || $(BIN)/nas demo-data $(DEMO_DATA) --family clear --n 900 --size 64 --seed 0
	$(BIN)/nas search experiments/demo.toml --run-id $(RUN_ID)
	$(BIN)/nas leaderboard results/demo/$(RUN_ID) --top 10
	$(BIN)/nas export results/demo/$(RUN_ID)

## the starting weights experiments/haadf.toml ships with (nas/pretrained/): demo data of the three development
## families in one set, one network trained on it (experiments/pretrain.toml), its arrays saved into place.
## About 35 minutes on 2 cores (README, Pretrained starting weights); `git diff --stat` shows whether they changed.
PRETRAINED := nas/pretrained/haadf-residual48.weights.npz
pretrained: $(STAMP)
	@test -f data/pretrain/labels.csv || $(BIN)/nas demo-data data/pretrain --family base,magnification,low-dose --n 12000 --size 128 --seed 301 --groups 16
	$(BIN)/nas search experiments/pretrain.toml --run-id $(RUN_ID)
	@mkdir -p $(dir $(PRETRAINED))
	$(BIN)/python -c "from pathlib import Path; from nas.search.fold import ship_weights; \
	  ship_weights(Path('results/pretrain/$(RUN_ID)'), Path('$(PRETRAINED)'))"
	@echo "wrote $(PRETRAINED) (the network's arrays, without the optimizer's state)"

## the test suite (slow-marked tests excluded; `make test-all` runs them too), in TEST_WORKERS processes
## (pytest-xdist): most of a test's time is one thread (TensorFlow tracing a fold's step functions, a worker's
## imports), so two processes on 2 cores took the suite from 15 min 2 s to 6 min 55 s (README, Development)
TEST_WORKERS ?= 2
test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS)

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) -m ''

## headless Chromium for the report's browser test (tests/test_report_browser.py skips without it); .ci/run
## calls this. Needs root for apt-get; says so and goes on where it cannot install.
browser:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || \
	  { { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium || \
	      { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }; } \
	    >/tmp/stem-nas-apt.log 2>&1 && echo "make browser: installed chromium"; } || \
	  echo "make browser: could not install chromium (see /tmp/stem-nas-apt.log); the browser test will be skipped"

lint: $(STAMP)
	$(BIN)/ruff check nas tests benchmarks

clean:
	rm -rf $(VENV) results/*/ data/demo
