# The two commands of README.md: `make demo` and `make test`. Each sets up what it needs on a
# fresh machine: a virtualenv with the operator's package and its test extras plus the sandbox
# (sandbox/: emulated AWS, the test API server launcher and the demo; a distribution of its own,
# never in the operator's wheel or image), and the test API server binaries (built from the Go
# modules pinned in tests/envtest, or taken from KUBEBUILDER_ASSETS),
# and helm for the chart tests (built from the Go modules pinned in tests/helm, or $HELM).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test lint unit envtest helm bench clean

$(STAMP): pyproject.toml sandbox/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,lint]' -e ./sandbox
	touch $(STAMP)

envtest:
	@if [ -z "$$KUBEBUILDER_ASSETS" ]; then $(MAKE) --no-print-directory -C tests/envtest; fi

helm:
	@if [ -z "$$HELM" ]; then $(MAKE) --no-print-directory -C tests/helm; fi

demo: $(STAMP) envtest
	$(BIN)/keyrotor demo

lint: $(STAMP)
	$(BIN)/ruff check operator sandbox tests
	$(BIN)/mypy

test: $(STAMP) envtest helm lint
	$(BIN)/python -m pytest

unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit

bench: $(STAMP) envtest
	$(BIN)/python -m tests.bench.run

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
