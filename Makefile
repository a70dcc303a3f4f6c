# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RUN_ID ?= $(shell date +%Y%m%d-%H%M%S)
DEMO_DATA ?= data/demo

.PHONY: demo test test-all lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

## the main job: demo data -> search -> export of the best model -> leaderboard
demo: $(STAMP)
	@test -f $(DEMO_DATA)/labels.csv || $(BIN)/nas demo-data $(DEMO_DATA) --n 600 --size 96 --seed 0
	$(BIN)/nas search experiments/demo.toml --run-id $(RUN_ID)
	$(BIN)/nas export results/demo/$(RUN_ID)
	$(BIN)/nas leaderboard results/demo/$(RUN_ID) --top 10

## the test suite (slow-marked tests excluded; `make test-all` runs them too)
test: $(STAMP)
	$(BIN)/python -m pytest -q

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m ''

lint: $(STAMP)
	$(BIN)/ruff check nas tests benchmarks

clean:
	rm -rf $(VENV) results/*/ data/demo
