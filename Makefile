# The two commands: `make run` (set up and run the whole pipeline) and `make test`.
# Both create .venv with the pinned dependencies first; rerunning them is safe and quick.
VENV := .venv
# Python: the first of python3.11, 3.12, 3.13 that runs (3.11 first: the lock was made and the suite run on it;
# pip resolves the same lock on 3.12 and 3.13, docs/install.md). Running it, not `command -v`, skips pyenv
# shims of versions that are installed but not selected. `make setup PYTHON=/path/to/python3.12` overrides.
PYTHON_VERSIONS := 3.11 3.12 3.13
ifeq ($(origin PYTHON),undefined)
PYTHON := $(shell for v in $(PYTHON_VERSIONS); do python$$v -c '' 2>/dev/null && { echo python$$v; break; }; done)
endif
# TensorFlow distribution installed at requirements.txt's tensorflow-cpu version: tensorflow-cpu by default,
# `make setup TF_PACKAGE='tensorflow[and-cuda]'` on an NVIDIA GPU machine. The choice is remembered in the venv,
# so later `make test`/`make run` keep it; TF_PACKAGE=tensorflow-cpu switches back.
TF_CHOICE := $(VENV)/.tf-package
TF_PACKAGE ?= $(or $(shell cat $(TF_CHOICE) 2>/dev/null),tensorflow-cpu)
ifeq ($(TF_PACKAGE),tensorflow-cpu)
REQUIREMENTS := requirements.txt
else
REQUIREMENTS := $(VENV)/requirements.txt
endif
STAMP := $(VENV)/.installed-$(shell (cat requirements.txt requirements.lock pyproject.toml; echo '$(TF_PACKAGE)') | sha256sum | cut -c1-12)
export PATH := $(abspath $(VENV)/bin):$(PATH)
HOST ?= 127.0.0.1
PORT ?= 5000
WORKERS ?= 2

.PHONY: setup run test test-fast bench server ui serve promote compare train-multiworker clean-checkpoints exp presets tune tune-status tune-dashboard

setup: $(STAMP)

$(STAMP):
	@test -n "$(PYTHON)" || { echo "error: none of python3.11, python3.12, python3.13 runs here; install one or set PYTHON=/path/to/python3.X (3.11 to 3.13)" >&2; exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(not (3, 11) <= sys.version_info[:2] <= (3, 13))' 2>/dev/null || { echo "error: PYTHON=$(PYTHON) is not a working Python 3.11, 3.12 or 3.13" >&2; exit 1; }
	@echo '$(TF_PACKAGE)' | grep -Eqx '[A-Za-z0-9._-]+(\[[A-Za-z0-9._,-]+\])?' || { echo "error: TF_PACKAGE='$(TF_PACKAGE)' is not a distribution name such as tensorflow-cpu, tensorflow or 'tensorflow[and-cuda]' (no version: it comes from requirements.txt)" >&2; exit 1; }
	@echo ">> creating $(VENV) with $(PYTHON) and installing the pinned dependencies (requirements.lock, $(TF_PACKAGE))"
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	@want=$$($(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])'); \
	 have=$$($(VENV)/bin/python -c 'import sys; print("%d.%d" % sys.version_info[:2])'); \
	 test "$$want" = "$$have" || { echo "error: $(VENV) has Python $$have but PYTHON=$(PYTHON) is $$want: remove $(VENV) to rebuild it, or set PYTHON=python$$have" >&2; exit 1; }
ifneq ($(TF_PACKAGE),tensorflow-cpu)
	@grep -q '^tensorflow-cpu==' requirements.txt || { echo "error: requirements.txt has no tensorflow-cpu==VERSION line to swap for $(TF_PACKAGE)" >&2; exit 1; }
	sed 's/^tensorflow-cpu==/$(TF_PACKAGE)==/' requirements.txt > $(REQUIREMENTS).tmp && mv $(REQUIREMENTS).tmp $(REQUIREMENTS)
endif
	@# Two TensorFlow distributions would share site-packages/tensorflow: remove the one not chosen first.
	@for dist in tensorflow tensorflow-cpu; do \
	   if [ "$$dist" != "$(firstword $(subst [, ,$(TF_PACKAGE)))" ] && $(VENV)/bin/python -m pip show -q $$dist 2>/dev/null; then \
	     echo ">> removing $$dist (TF_PACKAGE=$(TF_PACKAGE))"; $(VENV)/bin/python -m pip uninstall -q -y $$dist; fi; \
	 done
	$(VENV)/bin/python -m pip install -q --disable-pip-version-check -r $(REQUIREMENTS) -c requirements.lock
	$(VENV)/bin/python -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	@# vega, vega-lite and vega-embed from the npm registry (pinned sha512) for offline `dvc plots show`.
	$(VENV)/bin/python scripts/vendor_vega.py
	@echo '$(TF_PACKAGE)' > $(TF_CHOICE).tmp && mv $(TF_CHOICE).tmp $(TF_CHOICE)
	@rm -f $(VENV)/.installed-* && touch $@
	@echo ">> environment ready: $(VENV)"

run: setup
	@echo ">> dvc repro: prepare -> train -> evaluate -> plot (params.yaml)"
	dvc repro
	@echo ">> done: metrics.json, models/vae.keras, train_log.csv, plots/*.png; compare runs with 'make ui'"

# Two workers (pytest-xdist): tests that share a module fixture or a reference run stay on one worker
# (--dist loadgroup, tests/conftest.py), in the order tests/conftest.py gives (longest first).
PYTEST_WORKERS ?= 2
PYTEST_XDIST := -n $(PYTEST_WORKERS) --dist loadgroup --no-loadscope-reorder

test: setup
	@echo ">> pytest on $(PYTEST_WORKERS) workers (unit tests and tests/e2e with real dvc and mlflow)"
	python -m pytest $(PYTEST_XDIST)

# The unit tests only (no dvc repro, no servers, no browser), without the `slow` ones that train several
# models to compare their numbers (the fast path's equivalence, about 2 minutes of CPU): make test runs those.
test-fast: setup
	@echo ">> pytest -m 'not e2e and not slow' on $(PYTEST_WORKERS) workers"
	python -m pytest $(PYTEST_XDIST) -m "not e2e and not slow"

# Every training checkpoint (checkpoints/, resume state of unfinished runs, docs/reliability.md "Resume"),
# their MLflow runs that are still RUNNING closed as KILLED.
clean-checkpoints: setup
	python -m vaepipe.train.retention clean

train-multiworker: setup
	@echo ">> dvc exp run with train.distribute=multi_worker on $(WORKERS) local worker processes (docs/scaling.md)"
	@echo ">> their gRPC ports listen on all network interfaces, unauthenticated: run this on a private network or behind a firewall"
	VAEPIPE_WORKERS=$(WORKERS) VAEPIPE_WORKERS_LISTEN_ANYWHERE=1 dvc exp run -S train.distribute=multi_worker

bench: setup
	python bench/run.py

# The store's URI and artifact location come from vaepipe.tracking, as the stages' do. SQLite by default;
# VAEPIPE_SERVER_STORE=postgresql://..., VAEPIPE_SERVER_ARTIFACTS=DIR|URI, VAEPIPE_SERVER_AUTH=basic (admin:
# MLFLOW_AUTH_ADMIN_USERNAME / MLFLOW_AUTH_ADMIN_PASSWORD), see docs/tracking.md "Team server".
# Make variables reach these commands through the environment ("$$VAR" in the recipe: the shell expands the
# value, never parses it), so a quote in RUN=, MODEL=, ... cannot run a command, and a password in STORAGE= is
# on no command line (give it in the environment, `STORAGE=... make tune`: make's own arguments show in ps).
server ui serve compare: export HOST := $(HOST)
server ui compare: export PORT := $(PORT)
server: setup
	python -m vaepipe.tracking server --host="$$HOST" --port="$$PORT"

ui: setup
	python -m vaepipe.tracking ui --host="$$HOST" --port="$$PORT"

# The workspace's model (models/mlflow_run_id's registered version) by default; MODEL= a models:/ or runs:/ URI,
# a run id or a DVC experiment name, e.g. MODEL=models:/vaepipe-vae@champion, models:/vaepipe-vae/7,
# runs:/<run id>/model (paths and other URIs are refused). SERVE_PORT= its port.
SERVE_PORT ?= 5001
serve: export SERVE_PORT := $(SERVE_PORT)
serve: setup
	python -m vaepipe.tracking serve --host="$$HOST" --port="$$SERVE_PORT" $(if $(MODEL),--model="$$MODEL")

# Moves the alias champion of vaepipe-vae to the version of RUN= (an MLflow run id or a DVC experiment name).
promote: setup
	python -m vaepipe.tracking promote -- "$$RUN"

# reports/compare.{md,csv,html} + figures from the FINISHED runs: SWEEP=name, LAST=N, FILTER="mlflow filter", SORT=metric;
# STUDY=name (STORAGE=url): a `make tune` study's runs, its trials table and Optuna's figures
compare: setup
	$(if $(STUDY),$(if $(STORAGE),VAEPIPE_TUNE_STORAGE="$$STORAGE")) python -m vaepipe.compare --ui-host="$$HOST" \
		--ui-port="$$PORT" $(if $(SWEEP),--sweep="$$SWEEP") $(if $(LAST),--last="$$LAST") $(if $(SORT),--sort="$$SORT") \
		$(if $(FILTER),--filter="$$FILTER") $(if $(STUDY),--study="$$STUDY")

# A named preset (presets/<name>.yaml) as a DVC experiment `<preset>-<short hash>`: PRESET=conv, QUEUE=1 to
# queue it instead, S='train.epochs=5 data.limit=2000' for extra -S overrides (one word each).
exp: setup
	@test -n "$(PRESET)" || { echo "error: PRESET= is missing: make exp PRESET=name (the presets: make presets)" >&2; exit 2; }
	python -m vaepipe.presets run '$(PRESET)' $(if $(QUEUE),--queue) $(foreach s,$(S),-S '$(s)')

presets: setup
	@python -m vaepipe.presets --list

# An Optuna search over DVC experiments (docs/search.md): SEARCH=path (default search.yaml), STORAGE=<Optuna
# storage URL> (default .optuna/journal.log; passed in the environment, never echoed), FINAL=1 for the chosen
# trials' full runs only. `make tune-status` prints the study's trials.
tune: setup
	@$(if $(STORAGE),VAEPIPE_TUNE_STORAGE="$$STORAGE") python -m vaepipe.tune $(if $(SEARCH),--search="$$SEARCH") $(if $(FINAL),--final)

tune-status: setup
	@$(if $(STORAGE),VAEPIPE_TUNE_STORAGE="$$STORAGE") python -m vaepipe.tune status $(if $(SEARCH),--search="$$SEARCH") \
		$(if $(STUDY),--study="$$STUDY")

# optuna-dashboard (Optuna's own web UI: history, importances, parallel coordinates, trial notes) on the studies of
# `make tune`'s storage (STORAGE= as for make tune, passed in the environment), on http://HOST:DASHBOARD_PORT.
DASHBOARD_PORT ?= 8080
tune-dashboard: export HOST := $(HOST)
tune-dashboard: export DASHBOARD_PORT := $(DASHBOARD_PORT)
tune-dashboard: setup
	@$(if $(STORAGE),VAEPIPE_TUNE_STORAGE="$$STORAGE") python -m vaepipe.tune.dashboard --host="$$HOST" --port="$$DASHBOARD_PORT"
