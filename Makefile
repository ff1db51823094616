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
# checkov (the infrastructure-as-code scanner of tests/unit/test_install_scanners.py) in a
# virtualenv of its own: its pins (urllib3, packaging, ...) must not move the operator's.
SCAN_VENV := .venv-scan
SCAN_STAMP := $(SCAN_VENV)/.installed-stamp

.PHONY: demo test lint unit envtest helm bench clean scan-tools lock

$(STAMP): pyproject.toml sandbox/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,lint]' -e ./sandbox
	touch $(STAMP)

$(SCAN_STAMP): pyproject.toml
	$(PYTHON) -m venv $(SCAN_VENV)
	$(SCAN_VENV)/bin/pip install --quiet --upgrade pip
	$(SCAN_VENV)/bin/pip install --quiet "$$($(PYTHON) -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["tool"]["keyrotor"]["scan-tools"])')"
	touch $(SCAN_STAMP)

scan-tools: $(SCAN_STAMP)

# requirements.lock: the image's dependencies with their hashes, from pyproject.toml.
lock: $(STAMP)
	$(BIN)/pip install --quiet pip-tools
	$(BIN)/pip-compile --quiet --generate-hashes --strip-extras --allow-unsafe --no-header \
	  --build-deps-for wheel --no-emit-find-links --output-file requirements.lock pyproject.toml

envtest:
	@if [ -z "$$KUBEBUILDER_ASSETS" ]; then $(MAKE) --no-print-directory -C tests/envtest; fi

helm:
	@if [ -z "$$HELM" ]; then $(MAKE) --no-print-directory -C tests/helm; fi

demo: $(STAMP) envtest
	$(BIN)/keyrotor demo

lint: $(STAMP)
	$(BIN)/ruff check operator sandbox tests
	$(BIN)/mypy

test: $(STAMP) envtest helm lint scan-tools
	$(BIN)/python -m pytest

unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit

bench: $(STAMP) envtest
	$(BIN)/python -m tests.bench.run

clean:
	rm -rf $(VENV) $(SCAN_VENV) .pytest_cache .mypy_cache .ruff_cache
