# The two commands: `make run` (set up and run the whole pipeline) and `make test`.
# Both create .venv with the pinned dependencies first; rerunning them is safe and quick.
PYTHON ?= python3.11
VENV := .venv
STAMP := $(VENV)/.installed-$(shell cat requirements.txt requirements.lock pyproject.toml | sha256sum | cut -c1-12)
export PATH := $(abspath $(VENV)/bin):$(PATH)
HOST ?= 127.0.0.1
PORT ?= 5000
WORKERS ?= 2

.PHONY: setup run test bench server ui serve clean train-multiworker

setup: $(STAMP)

$(STAMP):
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (Python 3.11 is required; set PYTHON=...)"; exit 1; }
	@echo ">> creating $(VENV) with $(PYTHON) and installing the pinned dependencies (requirements.lock)"
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt -c requirements.lock
	$(VENV)/bin/python -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	@rm -f $(VENV)/.installed-* && touch $@
	@echo ">> environment ready: $(VENV)"

run: setup
	@echo ">> dvc repro: prepare -> train -> evaluate -> plot (params.yaml)"
	dvc repro
	@echo ">> done: metrics.json, models/vae.keras, train_log.csv, plots/*.png; compare runs with 'make ui'"

test: setup
	@echo ">> pytest (unit tests, then tests/e2e with real dvc and mlflow)"
	python -m pytest

train-multiworker: setup
	@echo ">> dvc exp run with train.distribute=multi_worker on $(WORKERS) local worker processes (README: Scaling out)"
	VAEPIPE_WORKERS=$(WORKERS) dvc exp run -S train.distribute=multi_worker

bench: setup
	python bench/run.py

server: setup
	@echo ">> mlflow server on http://$(HOST):$(PORT) (SQLite backend store, artifacts in mlartifacts/)"
	mlflow server --host $(HOST) --port $(PORT) --workers 1 \
		--backend-store-uri sqlite:///$(abspath mlflow.db) --artifacts-destination $(abspath mlartifacts)

ui: setup
	@echo ">> mlflow ui on http://$(HOST):$(PORT)"
	mlflow ui --host $(HOST) --port $(PORT) --workers 1 \
		--backend-store-uri sqlite:///$(abspath mlflow.db) --default-artifact-root $(abspath mlartifacts)

serve: setup
	@echo ">> serving the latest registered model vaepipe-vae on http://$(HOST):5001"
	MLFLOW_TRACKING_URI=$${MLFLOW_TRACKING_URI:-sqlite:///$(abspath mlflow.db)} \
		mlflow models serve -m models:/vaepipe-vae/latest --host $(HOST) --port 5001 --env-manager local
