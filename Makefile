# Two entry points for a fresh machine: `make demo` and `make test`. Both create .venv.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
DEVSTAMP:= $(VENV)/.installed-dev

.PHONY: demo test lint bench clean

# Real data: $CNNLAB_DATA if set, else ../shared/data when it sits beside the checkout.
ifeq ($(CNNLAB_DATA),)
  ifneq ($(wildcard ../shared/data),)
    export CNNLAB_DATA := $(abspath ../shared/data)
  endif
endif

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(DEVSTAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'
	touch $@ $(STAMP)

demo: $(STAMP)
	$(BIN)/cnnlab demo

lint: $(DEVSTAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check src tests benchmarks

test: $(DEVSTAMP) lint
	$(BIN)/pytest -n 2 -q

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .ruff_cache

# Side-by-side training benchmark (issue 5): Keras (own venv) vs plain PyTorch vs cnnlab.
# Long (over an hour on 2 cores): run by hand on a quiet machine, never in CI.
bench: $(DEVSTAMP)
	bash benchmarks/setup_keras_env.sh
	$(BIN)/python benchmarks/bench_train.py --out benchmarks/results/$$(date +%F)
