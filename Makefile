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
        tail test-data bench clean tools run-nats

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
	$(PY) -m pip install --quiet -e '.[dev,broker,nats]'
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

lint: $(STAMP) ## ruff (lint and format check), hadolint on the Dockerfile
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/hadolint --failure-threshold style Dockerfile

typecheck: $(STAMP) ## mypy --strict over the package, tests and benchmarks
	$(VENV)/bin/mypy

test: $(STAMP) tools proto-check lint typecheck deploy-check ## Everything CI checks: generated code, lint, types, manifests, the test suite
	$(PY) -m pytest

# promtool (Debian's prometheus package) lints the exposition text `generate --format prometheus` writes and
# serves; nats-server (Debian's nats-server package, 2.9) runs the three-node JetStream cluster of the NATS tests
# (tests/nats_cluster.py starts its own servers: the package starts none); tmux is the terminal in which
# tests/test_progress_terminal.py watches the streamer's progress line. Each is installed only when it is
# missing, all in one apt-get install: apt-get update runs only when the install fails without it. The package
# puts nats-server in /usr/sbin, which a non-root user's PATH lacks: it is looked for there too (as the tests do).
tools: ## Install promtool (apt, package prometheus), nats-server and tmux (apt) when they are not on PATH; tests use them
	@export PATH="$$PATH:/usr/sbin"; packages=""; \
	command -v promtool >/dev/null 2>&1 || packages="$$packages prometheus"; \
	command -v nats-server >/dev/null 2>&1 || packages="$$packages nats-server"; \
	command -v tmux >/dev/null 2>&1 || packages="$$packages tmux"; \
	[ -z "$$packages" ] || { \
	  sudo=$$([ "$$(id -u)" -eq 0 ] || echo sudo); \
	  install="$$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends$$packages"; \
	  echo "installing$$packages: $$install"; \
	  $$install >/dev/null || { $$sudo apt-get update -q >/dev/null && $$install >/dev/null; }; \
	}
	@promtool --version 2>&1 | head -n 1
	@PATH="$$PATH:/usr/sbin" nats-server --version
	@tmux -V

# Every overlay in deploy/overlays rendered by kubectl's kustomize (offline) and validated against the Kubernetes 1.32
# schemas that kubernetes-validate bundles, strictly (unknown fields are errors). Anything it prints, a warning for a
# kind it has no schema for included, fails the target. kubectl is not installed by this Makefile (Debian's
# kubernetes-client is 1.20, without kustomize 5).
.PHONY: deploy-check
deploy-check: $(STAMP) ## Render each deploy/overlays/* with kubectl kustomize and validate it (kubernetes-validate --strict -k 1.32)
	@command -v kubectl >/dev/null 2>&1 || { echo "deploy-check needs kubectl (1.27 or newer, with kustomize) on PATH"; exit 1; }
	@set -o pipefail; status=0; for overlay in deploy/overlays/*/; do \
	  report=$$( { kubectl kustomize "$$overlay" | $(VENV)/bin/kubernetes-validate --strict -k 1.32 --quiet -; } 2>&1) \
	    && [ -z "$$report" ] && echo "$$overlay: valid" || { echo "$$overlay: INVALID"; echo "$$report"; status=1; }; \
	done; exit $$status

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

# The cluster is the tests' harness (tests/nats_cluster.py --serve): three nats-servers on free 127.0.0.1 ports in a
# temporary directory, gone at the end. It writes its address to a file once JetStream is ready (or exits with the
# servers' logs after its own deadline), and on SIGTERM prints what each stream holds before stopping.
run-nats: $(STAMP) tools ## Like run, into a local three-node NATS JetStream cluster (MQ_ADDRESS is not used)
	@set -e; tmp=$$(mktemp -d); \
	$(PY) -m tests.nats_cluster --serve --address-file "$$tmp/address" & cluster=$$!; \
	trap 'kill -TERM $$cluster 2>/dev/null; wait $$cluster 2>/dev/null || true; rm -rf "$$tmp"' EXIT; \
	while [ ! -s "$$tmp/address" ]; do kill -0 $$cluster 2>/dev/null || exit 1; sleep 0.1; done; \
	$(PY) -m rxstreamer run $(CONFIG_FLAG) --mq-address "$$(cat "$$tmp/address")" --metrics-path '$(METRICS)' \
	  --interval '$(INTERVAL)'

mq: $(STAMP) ## Run the reference broker (on MQ_ADDRESS when set)
	$(PY) -m rxstreamer mq $(CONFIG_FLAG) $(call given,MQ_ADDRESS,--listen)

# The launcher: a POSIX sh script that execs this checkout's venv Python by its absolute path, so it runs from any
# directory (`-P`: the directory it is run from is not put on sys.path, where a folder named rxstreamer would shadow
# the package). Phony, so it is rewritten every time: one printf, and a moved checkout gets the new path.
telemetry-streamer: $(STAMP) ## Build ./telemetry-streamer, the streamer runnable from any directory (--config config.yaml)
	@printf '%s\n' '#!/bin/sh' \
	  '# rxstreamer from this checkout: made by `make telemetry-streamer` (again after moving the checkout).' \
	  '# Takes the flags of `python -m rxstreamer`; relative paths are relative to the directory you run it from.' \
	  "exec '$(abspath $(PY))' -P -m rxstreamer \"\$$@\"" > $@.tmp
	@chmod +x $@.tmp && mv -f $@.tmp $@
	@echo "built ./$@: e.g. ./$@ --config config.yaml (a broker must be listening: make mq)"

run-streamer: $(STAMP) ## Run the streamer: the defaults, plus the variables you set (a broker must be listening)
	$(PY) -m rxstreamer run $(STREAMER_FLAGS)

tail: $(STAMP) ## Print what the queue holds (on MQ_ADDRESS when set), from the beginning
	$(PY) -m rxstreamer tail $(CONFIG_FLAG) $(call given,MQ_ADDRESS,--mq-address) --from-beginning --idle-timeout 2s

test-data: $(STAMP) ## Regenerate test-data/metrics.csv (deterministic)
	$(PY) -m rxstreamer generate --hosts 4 --gpus 8 --scrapes 3 --seed 7 --output test-data/metrics.csv

bench: $(STAMP) ## Run every benchmark, print one table (about 6 min; not part of `make test`)
	$(PY) bench/run_all.py

clean: ## Remove the virtual environment and caches
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache *.egg-info
