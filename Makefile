# Every target installs what it needs first (`setup` is idempotent and fast once done).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export MLFLOW_DISABLE_TELEMETRY ?= true
export DO_NOT_TRACK ?= 1
export DVC_NO_ANALYTICS ?= 1
export SPARK_LOCAL_IP ?= 127.0.0.1
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: setup pipeline stage test test-cluster lint bench serve bench-serve clean help cluster-up cluster-down \
	cluster-status bench-scale

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml requirements.lock
	bash scripts/setup.sh $(PYTHON) $(VENV)
	@touch $@

setup: $(STAMP)  ## create .venv and install the pinned packages (Java 17 checked)

pipeline: $(STAMP)  ## run every stage with DVC (only what changed reruns)
	$(BIN)/dvc repro

stage: $(STAMP)  ## run one stage without DVC: make stage STAGE=prep
	@test -n "$(STAGE)" || (echo "usage: make stage STAGE=fetch|prep|split|..." && exit 2)
	$(BIN)/python -m src.supervisor run $(STAGE)

test: $(STAMP)  ## run the test suite (real Spark, MLflow and DVC)
	$(BIN)/python -m pytest

test-cluster: $(STAMP)  ## the stages on a real two-worker standalone cluster equal local mode's
	$(BIN)/python -m pytest -m cluster

lint: $(STAMP)  ## ruff
	$(BIN)/ruff check src tests scripts

bench: $(STAMP)  ## time and peak memory of the stages on the full real sample
	$(BIN)/python -m scripts.bench

serve: $(STAMP)  ## run the REST API on serving.host:serving.port (default 127.0.0.1:8000)
	$(BIN)/python -m src.supervisor serve $(if $(BUNDLE),--bundle $(BUNDLE),)

bench-serve: $(STAMP)  ## /predict latency, ONNX vs Spark backend (ARGS="--duration 5")
	$(BIN)/python -m scripts.bench_serve $(ARGS)

cluster-up: $(STAMP)  ## start a Spark standalone master + workers here (spark.cluster in params.yaml)
	$(BIN)/python -m scripts.cluster up

cluster-down: $(STAMP)  ## stop the standalone cluster of cluster-up
	$(BIN)/python -m scripts.cluster down

cluster-status: $(STAMP)  ## the master's view: workers, cores, running applications
	$(BIN)/python -m scripts.cluster status

SIZES ?= 100000 500000 2900000
bench-scale: $(STAMP)  ## stage time and peak memory vs rows: make bench-scale SIZES="100000 500000"
	$(BIN)/python -m scripts.bench_scale --sizes $(SIZES) $(ARGS)

clean:  ## remove pipeline outputs (data, models, reports, logs, mlruns); keeps .venv
	rm -rf data/raw data/processed data/split models mlruns logs reports/*.json reports/plots .cache
