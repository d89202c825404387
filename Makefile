# Two commands for a newcomer: `make demo` and `make test`. Both create (or reuse) a venv with
# the locked `current` stack (torch 2.11); STACK=stable selects Composer's declared set (torch 2.7)
# in .venv-stable, STACK=latest the newest releases (resolved at install, not locked) in .venv-latest.
PYTHON ?= python3
STACK ?= current
VENV ?= $(if $(filter current,$(STACK)),.venv,.venv-$(STACK))
BIN := $(VENV)/bin
# Reinstall whenever the stack's package list or the project's dependencies change.
STACK_FILES := $(wildcard stacks/$(STACK).lock stacks/$(STACK).overrides) pyproject.toml stacks/install.sh
STAMP := $(VENV)/.installed-$(shell cat $(STACK_FILES) | cksum | cut -d' ' -f1)

.PHONY: setup demo demo-finetune test test-fast lock gpu-wheels clean

setup: $(STAMP)

$(STAMP): $(STACK_FILES)
	PYTHON=$(PYTHON) stacks/install.sh $(STACK) $(VENV)
	rm -f $(VENV)/.installed-*
	touch $@

# Build the embedded corpus and tokenizer, train a small MPT on 2 CPU processes, summarise.
demo: setup
	$(BIN)/python launch/demo.py

# After `make demo`: instruction-tune its model (docstring -> function, responses only, packed).
demo-finetune: setup
	$(BIN)/python launch/demo_finetune.py

# Everything, including the slow end-to-end runs through the real composer launcher. Two pytest processes:
# mosaicml-streaming keeps a file descriptor per shared-memory segment open until its process exits, and
# tests/data alone opens hundreds of datasets (tests/conftest.py also closes them after each test).
# The slowest tests are listed at the end of each: CI has a 45-minute budget for both stacks.
test: setup
	@$(BIN)/python -m foundry.stack_report $(STACK)
	$(BIN)/python -m pytest tests/data -q --durations=15; data=$$?; \
	$(BIN)/python -m pytest tests -q --durations=25 --ignore=tests/data; rest=$$?; \
	test $$data -eq 0 -a $$rest -eq 0

# Unit tests only (seconds, no launcher runs).
test-fast: setup
	@$(BIN)/python -m foundry.stack_report $(STACK)
	$(BIN)/python -m pytest tests -q -m "not slow"

# Regenerate stacks/current.lock and stacks/stable.lock from stacks/*.in and pyproject.toml.
lock:
	stacks/lock.sh

# The wheels launch/gpu/check.sh installs on a GPU machine with torch preinstalled (Python 3.12).
gpu-wheels:
	stacks/gpu_wheels.sh

clean:
	rm -rf demo_out runs .pytest_cache
