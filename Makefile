# Two commands for a newcomer: `make demo` and `make test`. Both create (or reuse) .venv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Reinstall whenever the dependency list changes.
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: setup demo test test-fast clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $@

# Build the embedded corpus and tokenizer, train a small MPT on 2 CPU processes, summarise.
demo: setup
	$(BIN)/python launch/demo.py

# Everything, including the slow end-to-end runs through the real composer launcher.
test: setup
	$(BIN)/python -m pytest tests -q

# Unit tests only (seconds, no launcher runs).
test-fast: setup
	$(BIN)/python -m pytest tests -q -m "not slow"

clean:
	rm -rf demo_out runs .pytest_cache
