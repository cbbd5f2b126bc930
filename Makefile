# The project's commands. Each target creates .venv when missing, so each works
# alone on a fresh clone (torch==2.13.0 first: the local CPU build).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PORT ?= 3000
export RECSYS_HOME ?= $(CURDIR)/.recsys
export DAGSTER_HOME := $(RECSYS_HOME)/dagster

.PHONY: demo test test-fast bench bench-docs ui serve mlflow-ui mlflow-server consume stop install lint lineage bento

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	command -v npm >/dev/null || (apt-get update -qq && apt-get install -y -qq npm >/dev/null)
	# The web page's browser test: Debian's Chromium and its driver (skipped, saying
	# why, where apt-get cannot install them).
	command -v chromedriver >/dev/null || (apt-get update -qq && apt-get install -y -qq \
		chromium chromium-driver >/dev/null) || echo "no chromium: the browser test will skip"
	$(BIN)/python -m orchestration.docs_assets
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/recsys demo

# Every tier: unit, then integration (real Redis, MLflow store, Dagster, HTTP).
test: $(STAMP)
	$(BIN)/python -m pytest tests/unit tests/integration

# The unit tier alone: no services, well under a minute.
test-fast: $(STAMP)
	$(BIN)/python -m pytest tests/unit -m "not slow"

bench: $(STAMP)
	$(BIN)/python -m bench $(SECTIONS)

# docs/benchmarks.md (and the results table of docs/models.md) from bench_results/*.json.
bench-docs: $(STAMP)
	$(BIN)/python -m bench --docs

lint: $(STAMP)
	$(BIN)/ruff check .

ui: $(STAMP)
	$(BIN)/recsys ui --port 3001

serve: $(STAMP)
	$(BIN)/recsys serve --port $(PORT)

mlflow-ui: $(STAMP)
	$(BIN)/recsys mlflow-ui --port 5000

# A tracking server for several hosts: then export MLFLOW_TRACKING_URI=http://127.0.0.1:5000
mlflow-server: $(STAMP)
	$(BIN)/recsys mlflow-server --port 5000

# Drain the event stream into the offline event log until Ctrl-C.
consume: $(STAMP)
	$(BIN)/recsys consume

# A Bento of the service (deploy with bentoml serve / bentoml containerize).
bento: $(STAMP)
	$(BIN)/bentoml build

lineage: $(STAMP)
	$(BIN)/recsys lineage $(VERSION)

stop: $(STAMP)
	$(BIN)/recsys stop
