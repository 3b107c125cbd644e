# Every target sets up the project-local virtualenv (.venv) first, once.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: setup sweep test test-slow lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	rm -f $(VENV)/.installed-* && touch $(STAMP)

setup: $(STAMP)            ## create .venv and install cnnsearch with its test tools

sweep: setup               ## the main job: the default sweep on the bundled digits data
	$(BIN)/cnnsearch sweep $(ARGS)

test: setup                ## the fast test suite
	$(BIN)/pytest -q

test-slow: setup           ## the slow tests (real subprocess sweeps, SIGKILL resume, ...)
	$(BIN)/pytest -q -m slow

.PHONY: bench
bench: setup               ## every benchmark in full mode, in sequence (hours), then the README tables
	$(BIN)/python -m benchmarks.wholerun
	$(BIN)/python -m benchmarks.overhead
	$(BIN)/python -m benchmarks.throughput
	$(BIN)/python -m benchmarks.quality $(if $(AUTOKERAS_PYTHON),--autokeras-python $(AUTOKERAS_PYTHON))
	$(BIN)/python -m benchmarks.memory
	$(BIN)/python -m benchmarks.costs
	$(BIN)/python -m benchmarks.profile
	$(BIN)/python -m benchmarks.scaling
	$(BIN)/python -m benchmarks.report

lint: setup
	$(BIN)/ruff check .

clean:                     ## remove generated output (sweeps, MLflow store, exports)
	rm -rf outputs multirun
