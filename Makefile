# asr: every target installs the project into .venv first, so `make train` and `make test` work on a fresh clone.
PYTHON      ?= python3
VENV        ?= .venv
BIN         := $(VENV)/bin
RECIPE      ?= an4
ARGS        ?=
CKPT        ?=
CONSTRAINTS ?= constraints.txt

.PHONY: install train evaluate test test-slow lint bench clean

$(BIN)/.installed: pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(if $(CONSTRAINTS),-c $(CONSTRAINTS)) -e '.[dev,export]'
	touch $@

install: $(BIN)/.installed

train: install  ## download + prepare the recipe's data, train, print the WER table
	$(BIN)/python -m asr.train recipe=$(RECIPE) $(ARGS)

evaluate: install  ## make evaluate CKPT=exp/an4/<run>/checkpoints/best.ckpt
	@test -n "$(CKPT)" || { echo "usage: make evaluate CKPT=exp/<recipe>/<run>/checkpoints/best.ckpt"; exit 2; }
	$(BIN)/python -m asr.evaluate checkpoint=$(CKPT) $(ARGS)

test: install  ## the default (fast) suite
	$(BIN)/python -m pytest -q $(ARGS)

test-slow: install  ## tests marked slow
	$(BIN)/python -m pytest -q -m slow $(ARGS)

lint: install
	$(BIN)/ruff check asr tests hydra_plugins

bench: install  ## LibriSpeech prepare speed on a synthetic 20,000-file tree (files/s)
	$(BIN)/python benchmarks/prepare_librispeech.py $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
