# modelsoak — what the README and CI call.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# A CPU build of torch; an unpinned torch pulls a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.modelsoak-installed

.PHONY: setup native demo test test-fast faults bench proto lint docs samples stack system-deps tools k8s-sync image image-cuda clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e '.[dev]'
	mkdir -p .tools/protobuf-latest
	$(PY) -m pip download -q --no-deps --only-binary=:all: -d .tools/protobuf-latest 'protobuf>=6.31.1'
	touch $(STAMP)

# The main job on an embedded default: server with a built-in model, a short
# headless load test, a report and a verdict.
demo: setup native
	$(PY) -m loadtest.demo

# Debian packages the tests use: Prometheus (with promtool), the Pushgateway,
# libb64 (which Triton's perf_analyzer links), and libnghttp2's headers (the load
# generator's native gRPC client builds against them).
system-deps:
	@if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null \
	    || ! command -v prometheus-pushgateway >/dev/null || ! ldconfig -p | grep -q libb64.so.0d \
	    || ! command -v chromium >/dev/null || [ ! -f /usr/include/nghttp2/nghttp2.h ]; then \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq \
	    --no-install-recommends prometheus prometheus-pushgateway libb64-0d chromium libnghttp2-dev >/dev/null; \
	fi

# The load generator's native gRPC client (loadtest/native, gcc + libnghttp2-dev). Where it
# cannot build, this says why and the load generator makes its calls with grpc.aio.
native: setup
	@$(PY) -c "from loadtest.native_client import build; why = build(); print('native client: ' + (why or 'built'))"

# Triton's perf_analyzer, for the interoperability test (downloaded, never committed).
tools: setup
	$(PY) tools/fetch_perf_analyzer.py

test: setup system-deps native tools
	$(PY) -m pytest -q

# The fault suite alone (it also runs in `make test`).
faults: setup
	$(PY) -m pytest -q -m faults

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

bench: setup
	$(PY) -m bench

proto: setup
	$(PY) -m server.proto.generate

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

# The documentation site, offline and strict (a warning fails it) into build/site;
# its reference pages are made from the code while it builds (tools/docs_hooks.py).
docs: setup
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

# The sample outputs the docs show (docs/samples/), from real runs.
samples: setup
	$(PY) tools/sample_outputs.py

stack: setup system-deps
	$(PY) -m exporters.stack

# Kubernetes: regenerate the monitoring component's copies of exporters/ rules and dashboards.
k8s-sync: setup
	$(PY) k8s/sync.py

# Container images (need a Docker daemon; not part of the tests).
image:
	docker build -t modelsoak:0.1.0 .
image-cuda:
	docker build -f Dockerfile.cuda -t modelsoak:0.1.0-cuda .

clean:
	rm -rf $(VENV) .tools build *.egg-info .pytest_cache .mypy_cache .ruff_cache
