# The command vocabulary of tlops, for people, hooks and CI.
SHELL := /bin/bash
UV_VERSION := 0.13.8
UV ?= $(shell command -v uv 2>/dev/null || echo "python3 -m uv")
VENV := .venv
BIN := $(VENV)/bin
EXTRA ?= cpu
CONFIG ?= configs/demo.yaml
MLFLOW_PORT ?= 5000

.PHONY: setup demo test test-fast check format bench ui screenshots clean

setup:  ## install the locked dependencies (EXTRA=cpu or EXTRA=gpu) into .venv, byte-compiled; an empty Prefect database for new Prefect homes
	@command -v uv >/dev/null 2>&1 || python3 -m uv --version >/dev/null 2>&1 \
		|| python3 -m pip install --quiet "uv==$(UV_VERSION)"
	$(UV) sync --frozen --extra $(EXTRA) --compile-bytecode
	$(BIN)/python -m flows.prefect_home

demo: setup  ## the main job, offline: sample, DVC, pretrain, fine-tune, gate, register; vs scratch
	$(BIN)/tlops sample --out data --if-missing
	$(BIN)/dvc add data
	$(BIN)/dvc push
	$(BIN)/tlops pretrain configs/demo-source.yaml
	$(BIN)/tlops train $(CONFIG)
	$(BIN)/tlops train $(CONFIG) --set name=digits-scratch --set backbone.weights=none \
		--set "gate.rules=[]"
	$(BIN)/tlops compare digits digits-scratch
	@echo "Open the MLflow UI with 'make ui' (http://127.0.0.1:$(MLFLOW_PORT)): experiments"
	@echo "'glyphs', 'digits', 'digits-scratch'; Models: glyphs-backbone, digits (@champion)."

test: setup  ## the whole test suite (unit + flows with real services)
	$(BIN)/pytest -q -n 2 --dist worksteal

test-fast: setup  ## the unit layer alone (seconds to a couple of minutes)
	$(BIN)/pytest -q -m unit -n 2

check: setup  ## ruff (lint + format), mypy and the import contracts (layers)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

format:
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: setup  ## benchmarks that print JSON
	$(BIN)/python bench/validate.py
	$(BIN)/python bench/train.py
	$(BIN)/python bench/recipe.py
	$(BIN)/python bench/serve.py
	$(BIN)/python bench/scale.py

ui:  ## the MLflow UI for the local store, on 127.0.0.1
	$(BIN)/mlflow server --backend-store-uri sqlite:///mlflow/mlflow.db \
		--default-artifact-root ./mlflow/artifacts --host 127.0.0.1 --port $(MLFLOW_PORT)

screenshots:  ## PNGs of the MLflow UI for the README (docs/img/; needs chromium, after make demo)
	$(BIN)/python docs/screenshots.py

clean:
	rm -rf .tlops .pytest_cache .mypy_cache .ruff_cache
