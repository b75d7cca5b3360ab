# rxstreamer: every command a developer or CI needs. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PROTO_SRC := $(wildcard protos/rxstreamer/proto/*.proto)
PROTO_OUT := rxstreamer/proto

# Quick start knobs: `make run INTERVAL=1s` streams at the production default pace. `make run` always uses
# these (the defaults below); the other targets pass only those you set, as flags over CONFIG and settings.toml.
MQ_ADDRESS ?= 127.0.0.1:50051
INTERVAL ?= 100ms
METRICS ?= test-data/metrics.csv
CONFIG ?=
# How long `make run` waits for its broker to answer its health check before giving up.
READY_TIMEOUT ?= 10s

# `--flag 'value'` when the variable came from the command line or the environment, nothing for a default.
given = $(if $(filter-out file default undefined,$(origin $(1))),$(2) '$($(1))')
CONFIG_FLAG = $(if $(CONFIG),--config '$(CONFIG)')
STREAMER_FLAGS = $(CONFIG_FLAG) $(call given,MQ_ADDRESS,--mq-address) $(call given,METRICS,--metrics-path) \
                 $(call given,INTERVAL,--interval)

.PHONY: help install proto proto-check lint typecheck test test-fast run mq telemetry-streamer run-streamer \
        tail test-data bench clean tools

help: ## List the targets and the variables they take
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-20s %s\n", $$1, $$2}'
	@echo
	@echo "Variables, e.g. make run MQ_ADDRESS=127.0.0.1:50052 (make run always uses them, with these defaults;"
	@echo "the other targets pass only those you set, as flags that win over CONFIG and settings.toml):"
	@printf "  %-11s %-22s %s\n" MQ_ADDRESS "$(MQ_ADDRESS)" "where the broker listens and the streamer and tail connect" \
	  METRICS "$(METRICS)" "the DCGM CSV to stream" INTERVAL "$(INTERVAL)" "time between batches" \
	  CONFIG "$(or $(CONFIG),(none))" "a settings file (TOML, YAML or JSON), passed as --config FILE"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,broker]'
	touch $(STAMP)

install: $(STAMP) ## Create .venv with rxstreamer and its development tools

proto: $(STAMP) ## Regenerate the protobuf/gRPC code in rxstreamer/proto from protos/
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) -m grpc_tools.protoc -I protos \
	  --python_out=. --grpc_python_out=. --mypy_out=. --mypy_grpc_out=. $(PROTO_SRC)

proto-check: $(STAMP) ## Fail when rxstreamer/proto is stale against protos/
	@tmp=$$(mktemp -d); \
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) -m grpc_tools.protoc -I protos \
	  --python_out=$$tmp --grpc_python_out=$$tmp --mypy_out=$$tmp --mypy_grpc_out=$$tmp $(PROTO_SRC) && \
	for f in $$tmp/$(PROTO_OUT)/*; do \
	  diff -q "$$f" "$(PROTO_OUT)/$$(basename $$f)" >/dev/null || { echo "stale generated code: $(PROTO_OUT)/$$(basename $$f) (run 'make proto')"; rm -rf $$tmp; exit 1; }; \
	done; rm -rf $$tmp; echo "generated code is up to date"

lint: $(STAMP) ## ruff (lint and format check)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP) ## mypy --strict over the package, tests and benchmarks
	$(VENV)/bin/mypy

test: $(STAMP) tools proto-check lint typecheck ## Everything CI checks: generated code, lint, types, the test suite
	$(PY) -m pytest

# promtool (Debian's prometheus package) lints the exposition text `generate --format prometheus` writes and
# serves. Installed only when it is missing: apt-get update runs only when the install fails without it.
tools: ## Install promtool (apt, package prometheus) when it is not on PATH; the tests lint with it
	@command -v promtool >/dev/null 2>&1 || { \
	  sudo=$$([ "$$(id -u)" -eq 0 ] || echo sudo); \
	  install="$$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus"; \
	  echo "installing promtool: $$install"; \
	  $$install >/dev/null || { $$sudo apt-get update -q >/dev/null && $$install >/dev/null; }; \
	}
	@promtool --version 2>&1 | head -n 1

test-fast: $(STAMP) ## Only the test suite
	$(PY) -m pytest -q

run: $(STAMP) ## Quick start: a broker and the streamer on METRICS, ending with the summary
	@set -e; \
	$(PY) -m rxstreamer mq $(CONFIG_FLAG) --listen '$(MQ_ADDRESS)' & broker=$$!; \
	trap 'kill -TERM $$broker 2>/dev/null; wait $$broker 2>/dev/null || true' EXIT; \
	$(PY) -m rxstreamer.broker.ready '$(MQ_ADDRESS)' --timeout $(READY_TIMEOUT) --pid $$broker; \
	$(PY) -m rxstreamer run $(CONFIG_FLAG) --mq-address '$(MQ_ADDRESS)' --metrics-path '$(METRICS)' \
	  --interval '$(INTERVAL)'; \
	echo "--- the first 3 metrics the queue holds (rxstreamer tail):"; \
	$(PY) -m rxstreamer tail $(CONFIG_FLAG) --mq-address '$(MQ_ADDRESS)' --from-beginning --count 3

mq: $(STAMP) ## Run the reference broker (on MQ_ADDRESS when set)
	$(PY) -m rxstreamer mq $(CONFIG_FLAG) $(call given,MQ_ADDRESS,--listen)

telemetry-streamer: run-streamer ## Same as run-streamer

run-streamer: $(STAMP) ## Run the streamer alone (a broker must be listening)
	$(PY) -m rxstreamer run $(STREAMER_FLAGS)

tail: $(STAMP) ## Print what the queue holds (on MQ_ADDRESS when set), from the beginning
	$(PY) -m rxstreamer tail $(CONFIG_FLAG) $(call given,MQ_ADDRESS,--mq-address) --from-beginning --idle-timeout 2s

test-data: $(STAMP) ## Regenerate test-data/metrics.csv (deterministic)
	$(PY) -m rxstreamer generate --hosts 4 --gpus 8 --scrapes 3 --seed 7 --output test-data/metrics.csv

bench: $(STAMP) ## Run every benchmark, print one table (about 6 min; not part of `make test`)
	$(PY) bench/run_all.py

clean: ## Remove the virtual environment and caches
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache *.egg-info
