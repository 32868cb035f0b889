# Set-up and the main commands. `make test` is what CI runs (.ci/run).
# torch is pinned and installed first: a bare `torch` requirement pulls a multi-GB CUDA build.
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install lint test test-slow test-all bench smoke clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e '.[dev,postgres]'
	touch $@

install: $(STAMP)  ## create .venv with CPU torch and attnlab (editable)

lint: $(STAMP)  ## ruff, as configured in pyproject.toml
	$(BIN)/ruff check src tests bench

test: lint  ## the linter, then the default (fast) test suite
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)  ## only the tests marked slow (crash recovery, Ctrl-C, DDP sweeps)
	$(BIN)/python -m pytest -q -m slow

test-all: $(STAMP)  ## every test, slow ones included
	$(BIN)/python -m pytest -q -m ''

smoke: $(STAMP)  ## the main job: the smoke ablation study (SQLite, offline W&B) and its report
	$(BIN)/attnlab sweep run ablations/smoke.yaml
	$(BIN)/attnlab report ablations/smoke.yaml --out reports/smoke

bench: $(STAMP)  ## training-step throughput against torch.nn.Transformer
	$(BIN)/python bench/train_throughput.py

clean:
	rm -rf $(VENV) .pytest_cache src/*.egg-info
