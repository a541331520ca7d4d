# The two commands a newcomer needs: `make demo` (the main job, end to end, locally) and
# `make test` (everything CI runs). Each sets up what it needs on a fresh clone.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)


help:
	@echo "make demo    run the pipeline locally end to end, then stop it"
	@echo "make test    run the whole test suite (lint, unit, emulator integration, fuzzing)"
	@echo "make dev     start the local stack in the background (.local/stack.env)"
	@echo "make down    stop what make dev started"
	@echo "make bench   submit latency, worker overhead, generation time by stage"

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet 'torch==2.13.0'
	$(PY) -m pip install --quiet -e '.[dev,worker]'
	@rm -f $(VENV)/.installed-*
	@touch $@

venv: $(STAMP)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: venv
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

test: venv lint
	$(VENV)/bin/pytest

test-fast: venv
	$(VENV)/bin/pytest tests/unit -q

dev: venv
	$(PY) -m ltxv.local.stack up

down:
	@if [ -x $(PY) ]; then $(PY) -m ltxv.local.stack down; fi

status: venv
	$(PY) -m ltxv.local.stack status

bench: venv
	$(PY) bench/submit.py
	$(PY) bench/worker.py
	$(PY) bench/generate.py

clean: down
	rm -rf .local build

demo: venv
	$(PY) -m ltxv.local.demo
