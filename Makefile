# altlas: the two commands are `make run` and `make test`; everything else is set-up they call.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PACKAGES := -p altlas.schemas -p altlas.models -p altlas.pipelines -p altlas.consumers -p altlas.producers -p altlas.orchestration
STAMP := $(VENV)/.installed
# Extras installed by `make setup`: everything, so `make test` exercises every backend.
EXTRAS ?= dev,all
# Debian packages the backends and tests use (installed by `make system-deps` when missing).
APT_PACKAGES ?= kcat espeak-ng ffmpeg redis-server tesseract-ocr tesseract-ocr-eng fonts-dejavu-core docker-compose
# llama-cpp-python has no wheel on PyPI: build a portable one (pip caches it in ~/.cache/pip).
export CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF
export CMAKE_BUILD_PARALLEL_LEVEL ?= 2

.PHONY: bench-llm-peers run test test-chaos setup system-deps kafka-jars lint typecheck pytest bench bench-peers clean

run: setup kafka-jars ## local Kafka + orchestrator + sample requests, results as a table
	$(BIN)/altlas demo

test: setup kafka-jars lint typecheck pytest ## lint, type-check and the whole test suite against a real broker

setup: system-deps $(STAMP)

# Strict editable mode installs a link tree that mypy can follow (../shared/STYLE.md), so it
# is redone whenever pyproject.toml or the set of package files changes.
$(STAMP): FORCE
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@{ cat pyproject.toml; find schemas models pipelines consumers producers orchestration -type f \
	   \( -name '*.py' -o -name '*.avsc' -o -name '*.yaml' -o -name py.typed \) | sort; } | md5sum > $(VENV)/.wanted
	@if ! cmp -s $(VENV)/.wanted $(STAMP); then \
	  echo "installing altlas and its dev dependencies into $(VENV) ..."; \
	  { $(BIN)/pip install -q --upgrade pip setuptools wheel && \
	    $(BIN)/pip install -q -e '.[$(EXTRAS)]' --config-settings editable_mode=strict; } > $(VENV)/pip.log 2>&1 \
	    || { cat $(VENV)/pip.log; exit 1; }; \
	  cp $(VENV)/.wanted $(STAMP); \
	fi

FORCE:

system-deps:
	@missing=""; for pkg in $(APT_PACKAGES); do dpkg -s $$pkg >/dev/null 2>&1 || missing="$$missing $$pkg"; done; \
	if [ -n "$$missing" ]; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  echo "installing:$$missing"; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

kafka-jars: $(STAMP) ## fetch the Kafka jars into ~/.cache/altlas/kafka (once)
	$(BIN)/python -c "from altlas.orchestration.app.settings import LocalBrokerSettings as S; \
	from altlas.orchestration.devtools.kafka_dist import KafkaDistribution as D; s=S(); D(s.kafka_version, s.scala_version).ensure()"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy $(PACKAGES)

pytest: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-chaos: setup kafka-jars ## crashes, broker restarts, rebalances and fuzzing (minutes)
	$(BIN)/python -m pytest -q -m chaos $(PYTEST_ARGS)

bench: setup kafka-jars ## one benchmark, BENCH=throughput|orchestration|scaling|llm|vision|audio (minutes; not part of test)
	$(BIN)/python -m bench.$(or $(BENCH),throughput) $(BENCH_ARGS)

bench-peers: setup kafka-jars ## altlas vs Quix Streams, FastStream, MLServer, raw aiokafka (~10 min; peers install into ~/.cache/altlas/peers)
	$(BIN)/python -m bench.peers $(BENCH_ARGS)

bench-llm-peers: setup kafka-jars ## altlas vs llama-server (built once from the binding's sdist into ~/.cache/altlas/peers, ~9 min) and llama_cpp.server on a chat workload (~15 min; the issue's 200 requests: BENCH_ARGS=--requests 200 --rate 2)
	$(BIN)/python -m bench.llm_peers $(or $(BENCH_ARGS),--requests 24 --rate 1.0 --in-flight 8)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
