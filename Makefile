# asr: every target installs the project into .venv first, so `make train` and `make test` work on a fresh clone.
PYTHON      ?= python3
VENV        ?= .venv
BIN         := $(VENV)/bin
RECIPE      ?= an4
SEEDS       ?= 1,2,3
RUN         ?=
ARGS        ?=
CKPT        ?=
CONSTRAINTS ?= constraints.txt

.PHONY: install train evaluate report seeds test test-slow lint bench clean

$(BIN)/.installed: pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(if $(CONSTRAINTS),-c $(CONSTRAINTS)) -e '.[dev,export,lm,augment,serve,formats,track]'
	touch $@

install: $(BIN)/.installed

train: install  ## download + prepare the recipe's data, train, print the WER table
	$(BIN)/python -m asr.train recipe=$(RECIPE) $(ARGS)

evaluate: install  ## make evaluate CKPT=exp/an4/<run>/checkpoints/best.ckpt
	@test -n "$(CKPT)" || { echo "usage: make evaluate CKPT=exp/<recipe>/<run>/checkpoints/best.ckpt"; exit 2; }
	$(BIN)/python -m asr.evaluate checkpoint=$(CKPT) $(ARGS)

report: install  ## make report RUN=exp/an4/<run>: rebuild <run>/report.md and its plots
	@test -n "$(RUN)" || { echo "usage: make report RUN=exp/<recipe>/<run>"; exit 2; }
	$(BIN)/python -m asr.report $(RUN)

seeds: install  ## train the recipe once per seed (SEEDS=1,2,3), then print WER mean ± std
	$(BIN)/python -m asr.train -m recipe=$(RECIPE) seed=$(SEEDS) trainer.enable_progress_bar=false $(ARGS)

test: install  ## the default (fast) suite
	$(BIN)/python -m pytest -q $(ARGS)

test-slow: install  ## tests marked slow
	$(BIN)/python -m pytest -q -m slow $(ARGS)

lint: install
	$(BIN)/ruff check asr tests hydra_plugins

bench: install  ## training throughput, LSTM variants, prepare speed, long runs, loader cost per core, data at scale, 0.5 h rehearsal
	$(BIN)/python benchmarks/train_throughput.py $(ARGS)
	$(BIN)/python benchmarks/lstm_variants.py
	$(BIN)/python benchmarks/step_parts.py
	$(BIN)/python benchmarks/prepare_librispeech.py
	$(BIN)/python benchmarks/long_runs.py
	$(BIN)/python benchmarks/loader.py
	$(BIN)/python benchmarks/manifest_scale.py --utterances 100000
	$(BIN)/python benchmarks/shard_scale.py
	$(BIN)/python benchmarks/rehearsal.py --hours 0.5

clean:
	rm -rf $(VENV) .pytest_cache
