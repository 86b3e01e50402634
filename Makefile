# `make run` and `make test` install everything they need into .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install run test lint bench loadtest clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

install: $(BIN)/.installed

run: install
	$(BIN)/linkcoach serve

test: install
	$(BIN)/python -m pytest

bench: install
	$(BIN)/pip install -q -e '.[dev,bench]'
	$(BIN)/python benchmarks/streams.py $(ARGS)

lint: install
	$(BIN)/ruff check linkcoach_stream tests
	$(BIN)/mypy linkcoach_stream

clean:
	rm -rf $(VENV) .linkcoach
