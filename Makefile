# One vocabulary for people and CI: install demo test lint typecheck bench worker flower metrics.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
export DAGWORKER_REDIS_URL ?= redis://127.0.0.1:6379/0

.PHONY: install demo test test-unit test-integration chaos lint typecheck bench worker flower \
	metrics check-graph-html clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed  ## create .venv and install dagworker with its dev tools

demo: install  ## run the demo pipeline on a local worker (embedded Redis if none answers)
	$(BIN)/dagworker demo

test: install  ## unit and integration tests (integration needs Redis; .ci/run starts one)
	$(BIN)/python -m pytest -q

test-unit: install
	$(BIN)/python -m pytest -q tests/unit

test-integration: install
	$(BIN)/python -m pytest -q tests/integration

chaos: install  ## kill random workers under concurrent runs; prints figures (not part of `make test`)
	$(BIN)/python -m pytest -q -s -m chaos tests/chaos

lint: install
	$(BIN)/ruff check dagworker plugins tests bench
	$(BIN)/ruff format --check dagworker

typecheck: install
	$(BIN)/mypy

bench: install  ## benchmarks: print figures, assert nothing
	$(BIN)/python -m bench

worker: install  ## a worker on the default queue, with plugins from DAGWORKER_PLUGINS
	$(BIN)/celery -A dagworker worker --loglevel=INFO

flower: install  ## Flower on http://127.0.0.1:5555 against the same broker
	$(BIN)/celery -A dagworker flower --address=127.0.0.1 --port=5555

metrics: install  ## Prometheus exporter of the fleet's metrics on http://127.0.0.1:9808/metrics
	$(BIN)/dagworker metrics --address=127.0.0.1 --port=9808

check-graph-html: install  ## render a graph --html page in headless Chromium and check it
	$(BIN)/python tests/visual/check_graph_html.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
