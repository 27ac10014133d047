# The two commands a newcomer needs:
#   make demo   - install, start the local stack, replay real data, summary, serve until Ctrl-C
#   make test   - install and run the whole test suite over real servers
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
MODELS := triton_repo/fraud/1/meta.json triton_repo/recommender/1/meta.json triton_repo/pricing/1/meta.json
SNAPSHOT := build/features/fraud_snapshots.parquet
# Hash-locked dependencies (pip-compile --generate-hashes): LOCK = runtime + local + test extras (make
# install, CI), RUNTIME_LOCK = runtime only (the Docker image). `make lock` refreshes both after a pin of
# pyproject.toml changes; tests/test_lock.py fails while they disagree. torch is locked as the CPU build
# (torch==2.13.0+cpu): where no local copy of that wheel is on pip's path, add the PyTorch CPU index,
# `make install PIP_INDEX_ARGS="--extra-index-url https://download.pytorch.org/whl/cpu"`.
LOCK := requirements.lock
RUNTIME_LOCK := requirements-runtime.lock
PIP_INDEX_ARGS ?=
PIP_TOOLS := build/piptools/bin/pip-compile
COMPILE = $(PIP_TOOLS) --quiet --generate-hashes --allow-unsafe --strip-extras --no-emit-index-url --no-emit-find-links

.PHONY: install lock quix-venv quix-lock tools models demo test stack-up stack-down stack-status clean

install: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml $(LOCK)
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (Python 3.11 is required)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --require-hashes --no-deps $(PIP_INDEX_ARGS) -r $(LOCK)
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

# Re-resolve both lock files from pyproject.toml (pip-tools in its own venv under build/); the runtime
# lock is constrained to the full lock's versions, so the image runs what the tests ran.
lock:
	test -x $(PIP_TOOLS) || { $(PYTHON) -m venv build/piptools && build/piptools/bin/pip install --quiet pip-tools==7.6.2; }
	$(COMPILE) --extra local --extra test --output-file $(LOCK) pyproject.toml
	grep -E '^[A-Za-z0-9_.-]+==' $(LOCK) | sed 's/ \\$$//' > build/lock-constraints.txt
	$(COMPILE) --constraint build/lock-constraints.txt --output-file $(RUNTIME_LOCK) pyproject.toml

# The Quix Streams comparison job of bench/bench_features.py runs in a venv of its own (every quixstreams
# release caps confluent-kafka and pydantic below our pins): build/quixvenv from its own hash lock.
QUIX_VENV := build/quixvenv
QUIX_LOCK := bench/quix-requirements.lock
quix-venv: $(QUIX_VENV)/.installed
$(QUIX_VENV)/.installed: $(QUIX_LOCK)
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (Python 3.11 is required)"; exit 1; }
	test -x $(QUIX_VENV)/bin/python || $(PYTHON) -m venv $(QUIX_VENV)
	$(QUIX_VENV)/bin/pip install --quiet --require-hashes --no-deps $(PIP_INDEX_ARGS) -r $(QUIX_LOCK)
	touch $@
quix-lock:
	test -x $(PIP_TOOLS) || { $(PYTHON) -m venv build/piptools && build/piptools/bin/pip install --quiet pip-tools==7.6.2; }
	$(COMPILE) --output-file $(QUIX_LOCK) bench/quix-requirements.in

# System tools the stack and tests need: prometheus and promtool (Debian's prometheus package),
# Alertmanager (Debian's prometheus-alertmanager) and redis-cli (Debian's redis-tools: tests/test_compose.py
# forms the compose file's Redis Cluster with it, as its redis-cluster-init does) and jemalloc (Debian's
# libjemalloc2), which the local Valkey is started on (LOCAL_VALKEY_ALLOCATOR, streamscore.stack.valkey_env).
HAS_JEMALLOC := /sbin/ldconfig -p | grep -q 'libjemalloc\.so\.2 '
tools:
	@command -v promtool >/dev/null && command -v prometheus >/dev/null && command -v prometheus-alertmanager >/dev/null \
	  && command -v redis-cli >/dev/null && $(HAS_JEMALLOC) || { \
	  echo "installing prometheus, promtool, alertmanager, redis-cli and jemalloc (Debian packages prometheus, prometheus-alertmanager, redis-tools, libjemalloc2) ..."; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq prometheus prometheus-alertmanager redis-tools libjemalloc2 >/dev/null; }
	@command -v promtool >/dev/null && command -v prometheus >/dev/null || { echo "error: prometheus and promtool are required (apt-get install prometheus)"; exit 1; }
	@command -v prometheus-alertmanager >/dev/null || { echo "error: alertmanager is required (apt-get install prometheus-alertmanager)"; exit 1; }
	@command -v redis-cli >/dev/null || { echo "error: redis-cli is required (apt-get install redis-tools)"; exit 1; }
	@$(HAS_JEMALLOC) || { echo "error: libjemalloc.so.2 is required: the local Valkey runs on it, as production does (apt-get install libjemalloc2; or LOCAL_VALKEY_ALLOCATOR=libc)"; exit 1; }

# Training data: point-in-time feature snapshots computed by the live feature code.
$(SNAPSHOT): $(VENV)/.installed features/*.py | tools
	$(BIN)/python -m features.snapshot fraud --out $@

# Trained models (seeded, from ../shared/data) written into triton_repo/<model>/1/.
models: $(MODELS)
$(MODELS) &: $(VENV)/.installed $(SNAPSHOT) models/*.py triton_repo/*/1/model.py
	$(BIN)/python -m models

demo: tools models
	$(BIN)/streamscore demo

test: tools models
	$(BIN)/python -m pytest

stack-up: models
	$(BIN)/streamscore stack up
stack-down:
	$(BIN)/streamscore stack down
stack-status:
	$(BIN)/streamscore stack status

clean:
	-$(BIN)/streamscore stack down
	rm -rf build .run
