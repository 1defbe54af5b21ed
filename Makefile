# Flywheel — every entry point sets itself up: a fresh machine needs python3.11, java 17 and mvn.
# Downloads are cached outside the clone in $(FLYWHEEL_CACHE); the virtualenvs live in the clone.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

FLYWHEEL_CACHE ?= $(HOME)/.cache/flywheel
export FLYWHEEL_CACHE
UV_VERSION := 0.13.9
UV := $(FLYWHEEL_CACHE)/tools/uv-$(UV_VERSION)/bin/uv
export UV_CACHE_DIR := $(FLYWHEEL_CACHE)/uv
export UV_PYTHON_DOWNLOADS := never
export UV_LINK_MODE := hardlink
export PYTHONUNBUFFERED := 1

VENV := .venv
TRAINER_VENV := .venv-trainer
PY := $(VENV)/bin/python
TPY := $(TRAINER_VENV)/bin/python
MEMBERS := pyproject.toml uv.lock $(wildcard libs/*/pyproject.toml services/*/pyproject.toml clients/python/pyproject.toml)
LIGHT_PKGS := libs/common/flywheel_common libs/devkit/flywheel_devkit \
              services/ingest/flywheel_ingest services/curator/flywheel_curator \
              clients/python/flywheel_client
PYTEST_ARGS ?=
TS := clients/typescript
TSC := $(TS)/node_modules/.bin/tsc
export npm_config_cache := $(FLYWHEEL_CACHE)/npm
# deploy/k8s is rendered with `kubectl kustomize`; without kubectl, this kustomize (built from
# its Go module with the machine's Go) is put on PATH for the tests.
KUSTOMIZE_VERSION := v5.5.0
KUSTOMIZE_DIR := $(FLYWHEEL_CACHE)/tools/kustomize-$(KUSTOMIZE_VERSION)
export PATH := $(PATH):$(KUSTOMIZE_DIR)
# The tests of deploy/ that need the trainer environment (the Job template, the registry's pin).
DEPLOY_TRAINER_TESTS := tests/deploy/test_k8s_trainer_job.py tests/deploy/test_vacuum_pins_trainer.py

.PHONY: help setup setup-trainer setup-ts build-ts kafka-jars k8s-tools lint test test-light \
        test-trainer test-ts test-deploy demo bench clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

$(UV):
	python3.11 -m venv $(FLYWHEEL_CACHE)/tools/uv-$(UV_VERSION)
	$(FLYWHEEL_CACHE)/tools/uv-$(UV_VERSION)/bin/pip install -q uv==$(UV_VERSION)

$(VENV)/.synced: $(MEMBERS) | $(UV)
	$(UV) sync --locked
	touch $@

# Only this environment has torch/transformers/trl/peft.
$(TRAINER_VENV)/.synced: $(MEMBERS) | $(UV)
	UV_PROJECT_ENVIRONMENT=$(TRAINER_VENV) $(UV) sync --locked --group trainer
	touch $@

$(FLYWHEEL_CACHE)/kafka/.fetched: $(VENV)/.synced
	$(VENV)/bin/flywheel-kafka fetch
	touch $@

# The TypeScript SDK's compiler and Node types, pinned by package-lock.json; nothing at runtime.
$(TS)/node_modules/.installed: $(TS)/package.json $(TS)/package-lock.json
	cd $(TS) && npm ci --no-audit --no-fund
	touch $@

setup: $(VENV)/.synced kafka-jars ## light environment (ingest, curator, tests) + Kafka jars
setup-trainer: $(TRAINER_VENV)/.synced ## trainer environment (torch)
kafka-jars: $(FLYWHEEL_CACHE)/kafka/.fetched
setup-ts: $(TS)/node_modules/.installed ## the TypeScript SDK's build tools (npm, cached)

build-ts: setup-ts ## compile the TypeScript SDK (dist/) and its tests (dist-test/)
	$(TSC) -p $(TS)/tsconfig.json
	$(TSC) -p $(TS)/tsconfig.test.json

k8s-tools: ## kubectl, or a pinned kustomize built from its Go module, for the deploy/k8s tests
	@command -v kubectl >/dev/null || command -v kustomize >/dev/null || \
	  GOBIN=$(KUSTOMIZE_DIR) go install sigs.k8s.io/kustomize/kustomize/v5@$(KUSTOMIZE_VERSION)

lint: $(VENV)/.synced $(TRAINER_VENV)/.synced setup-ts ## ruff + mypy strict + tsc strict
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy $(LIGHT_PKGS)
	$(TRAINER_VENV)/bin/mypy services/trainer/flywheel_trainer
	$(TSC) -p $(TS)/tsconfig.test.json --noEmit

test-light: setup k8s-tools ## tests that need no torch (common, ingest, curator, deploy)
	$(PY) -m pytest tests --ignore=tests/trainer $(addprefix --ignore=,$(DEPLOY_TRAINER_TESTS)) \
	  $(PYTEST_ARGS)

test-trainer: setup setup-trainer k8s-tools ## trainer tests (tiny models on CPU, real broker and tables)
	$(TPY) -m pytest tests/trainer tests/curator/filters/test_detoxify_loader.py \
	  $(DEPLOY_TRAINER_TESTS) $(PYTEST_ARGS)

test-deploy: setup k8s-tools ## images built, compose stack run end to end (needs a Docker engine)
	$(PY) -m pytest tests/deploy -m deploy $(addprefix --ignore=,$(DEPLOY_TRAINER_TESTS)) $(PYTEST_ARGS)

test-ts: setup build-ts ## TypeScript SDK tests: Node's test runner against the real service
	node $(TS)/dist-test/test/run.js

test: lint test-light test-trainer test-ts ## the whole suite, as CI runs it

demo: setup ## run the flywheel locally and show what it does
	$(PY) -m demo

clean: ## remove the environments and local outputs (the download cache stays)
	rm -rf $(VENV) $(TRAINER_VENV) lake runs demo-out .mypy_cache .ruff_cache .pytest_cache \
	       $(TS)/node_modules $(TS)/dist $(TS)/dist-test
