# Two entry points, each doing all set-up on a fresh machine:
#   make demo   creates .venv, installs the project, then generates sample Earth Engine exports, trains the
#               demo U-Net on the sample's training patches (seeded) and runs the whole pipeline on them
#   make test   creates .venv, installs the project with its test extra and runs the test suite (CI: .ci/run)
#   make lint   ruff over the whole tree (rules in ruff.toml; CI runs it before the tests)
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
SHARED ?= ../shared/data
DEMO_OUT ?= out/demo
PYTEST_ARGS ?=

.PHONY: setup demo demo-filter lint test test-browser airflow-test bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel

$(VENV)/.installed: $(BIN)/python setup.py constraints.txt
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/mining-mapper sample --output $(DEMO_OUT)/sample --overwrite
	$(BIN)/mining-mapper train $(DEMO_OUT)/sample/training --output $(DEMO_OUT)/model \
	    --base-filters 8 --depth 3 --epochs 25 --learning-rate 0.002 --batch-size 8 --seed 0 --restart
	$(BIN)/mining-mapper run --exports $(DEMO_OUT)/sample/exports --model $(DEMO_OUT)/model/model \
	    --output $(DEMO_OUT)/run --probability-band --origin-band --overwrite
	$(BIN)/mining-mapper report $(DEMO_OUT)/run --output $(DEMO_OUT)/report
	@echo "COGs:    $(DEMO_OUT)/run/{grid}/{grid}_{year}.tif"
	@echo "summary: $(DEMO_OUT)/run/summary.json"
	@echo "report:  $(DEMO_OUT)/report/report.html"

# The post-classification filters alone, on the real MapBiomas Collection 6 series of ../shared/data.
demo-filter: setup
	$(BIN)/mining-mapper filter $(SHARED)/mapbiomas_c6_lourenco --output $(DEMO_OUT)/lourenco --origin-band --overwrite

# Chromium for the report's browser test (Debian's package; the test skips, saying so, without it).
test-browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	    (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || \
	    echo "chromium not installed: the report's browser test will skip"; }

lint: setup
	$(BIN)/ruff check --no-cache .

test: setup test-browser
	$(BIN)/python -m pytest -n 2 --durations=15 $(PYTEST_ARGS) tests

# The Composer DAG's tests under real Airflow, in a virtualenv of their own (Airflow's pins and the
# pipeline's cannot share one environment). Pinned by templates/composer/constraints-airflow.txt.
AIRFLOW_VENV ?= .venv-airflow
AIRFLOW_PACKAGES := apache-airflow==3.3.2 apache-airflow-providers-google==22.8.0 \
	apache-airflow-providers-cncf-kubernetes==10.25.0 apache-airflow-providers-apache-beam==6.3.1 \
	apache-airflow-providers-standard==1.21.0 pytest==9.2.0

$(AIRFLOW_VENV)/.installed: templates/composer/constraints-airflow.txt
	$(PYTHON) -m venv $(AIRFLOW_VENV) || python3 -m venv $(AIRFLOW_VENV)
	echo '*' > $(AIRFLOW_VENV)/.gitignore
	$(AIRFLOW_VENV)/bin/python -m pip install --quiet pip==26.3
	$(AIRFLOW_VENV)/bin/python -m pip install --quiet -c templates/composer/constraints-airflow.txt $(AIRFLOW_PACKAGES)
	touch $@

airflow-test: $(AIRFLOW_VENV)/.installed
	$(AIRFLOW_VENV)/bin/python -m pytest -p no:cacheprovider -rs tests/test_dag.py

bench: setup
	$(BIN)/python bench/bench_filters.py
	$(BIN)/python bench/bench_pipeline.py
	$(BIN)/python bench/bench_model.py
	$(BIN)/python bench/bench_inference.py
	$(BIN)/python bench/bench_update.py
	$(BIN)/python bench/bench_stats.py --years 12 --size 2048
	@test -d $(DEMO_OUT)/model/model && $(BIN)/python bench/bench_precision.py --sample $(DEMO_OUT)/sample \
	    --model $(DEMO_OUT)/model/model || echo "bench_precision: run make demo first (it needs the demo model)"

clean:
	rm -rf $(VENV) $(AIRFLOW_VENV) out .pytest_cache .hypothesis
