# The two commands a newcomer needs: `make demo` (the main job, end to end, locally) and
# `make test` (everything CI runs). Each sets up what it needs on a fresh clone.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml functions/submit/requirements.txt | cksum | cut -d' ' -f1)
# checkov and terraform-compliance pin packages the project cannot share: their own venv.
TFVENV := .venv-tf
TF_TOOLS := checkov==3.3.30 terraform-compliance==1.16.0
TFSTAMP := $(TFVENV)/.installed-$(shell echo '$(TF_TOOLS)' | cksum | cut -d' ' -f1)


help:
	@echo "make demo    run the pipeline locally end to end, then stop it"
	@echo "make test    run the whole test suite (lint, unit, emulator integration, fuzzing)"
	@echo "make dev     start the local stack in the background (.local/stack.env)"
	@echo "make down    stop what make dev started"
	@echo "make bench   submit latency, worker overhead, generation time by stage"
	@echo "make bench-wheels   the wheels bench/gpu.sh installs on an offline GPU machine"

$(STAMP): pyproject.toml functions/submit/requirements.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet 'torch==2.13.0'
	@# The functions' pins as constraints: the tests run against what Cloud Functions installs.
	$(PY) -m pip install --quiet -c functions/submit/requirements.txt -e '.[dev,worker]'
	@rm -f $(VENV)/.installed-*
	@touch $@

venv: $(STAMP)

$(TFSTAMP):
	@test -x $(TFVENV)/bin/python || $(PYTHON) -m venv $(TFVENV)
	$(TFVENV)/bin/python -m pip install --quiet --upgrade pip
	$(TFVENV)/bin/python -m pip install --quiet $(TF_TOOLS)
	@rm -f $(TFVENV)/.installed-*
	@touch $@

tf-tools: $(TFSTAMP)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: venv
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# The provider bindings the committed schemas were read from, so that the tests also
# check those schemas against them (tests/terraform/test_provider_schema.py).
tf-schema-wheels: venv
	$(PY) -m tools.tf_schema fetch

test: venv tf-tools tf-schema-wheels lint
	$(VENV)/bin/pytest

test-fast: venv
	$(VENV)/bin/pytest tests/unit -q

dev: venv
	$(VENV)/bin/ltxv dev up

down:
	@if [ -x $(VENV)/bin/ltxv ]; then $(VENV)/bin/ltxv dev down; fi

status: venv
	$(VENV)/bin/ltxv dev status

bench: venv
	$(PY) bench/submit.py
	$(PY) bench/worker.py
	$(PY) bench/count.py
	$(PY) bench/count_conditioning.py
	$(PY) bench/prepare_frames.py
	$(PY) bench/generate.py

# The wheels the GPU bench installs offline beside the machine's own torch (~57 MiB, in
# .bench-wheels/); then, on the GPU machine with .bench-wheels/ beside the tree:
# `bash bench/gpu.sh` (docs/benchmarks.md).
bench-wheels: venv
	$(PY) bench/wheels.py

# The terraform against the providers' schemas, as `terraform validate` would (offline;
# tests/terraform runs it too). tf-schema regenerates tools/tf_schema/schemas from the
# pinned binding wheels (pip download, ~67 MB) after a provider version moves.
tf-check: venv
	$(PY) -m tools.tf_schema check terraform

tf-schema: venv
	$(PY) -m tools.tf_schema extract

# The Cloud Functions' requirements.txt: pyproject.toml's dependencies pinned to the versions
# installed here (tests/unit/test_package.py fails when they drift from pyproject.toml).
requirements: venv
	$(PY) -m tools.function_requirements

# The deployable archives terraform uploads (it runs the same script itself on plan).
package:
	$(PYTHON) tools/package.py build/package

# The compliance features against a real plan, where terraform, the providers and
# credentials exist: make tf-compliance-plan TFVARS=terraform/terraform.tfvars
TFVARS ?= terraform.tfvars
tf-compliance-plan: tf-tools
	terraform -chdir=terraform init -input=false
	terraform -chdir=terraform plan -input=false -var-file=$(TFVARS) -out=../build/tfplan
	terraform -chdir=terraform show -json ../build/tfplan > build/plan.json
	$(TFVENV)/bin/terraform-compliance -p build/plan.json -f tests/terraform/features

clean: down
	rm -rf .local build

demo: venv
	$(PY) -m ltxv.local.demo
