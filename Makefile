# Two entry points, each doing all set-up on a fresh machine:
#   make demo   creates .venv, installs the project and runs the main job on sample data
#   make test   creates .venv, installs the project with its test extra and runs the test suite
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
SHARED ?= ../shared/data
DEMO_OUT ?= out/demo
PYTEST_ARGS ?=

.PHONY: setup demo test bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel

$(VENV)/.installed: $(BIN)/python setup.py constraints.txt
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/mining-mapper filter $(SHARED)/mapbiomas_c6_lourenco --output $(DEMO_OUT)/lourenco --origin-band

test: setup
	$(BIN)/python -m pytest -n 2 --durations=15 $(PYTEST_ARGS) tests

bench: setup
	$(BIN)/python bench/bench_filters.py

clean:
	rm -rf $(VENV) out .pytest_cache .hypothesis
