# Two commands matter: `make demo` and `make test`. Both create or refresh .venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PIP    := $(BIN)/python -m pip --disable-pip-version-check -q

.PHONY: demo test lint crd clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstall when the dependency list or pins change; torch first (CPU wheel on disk).
$(STAMP): pyproject.toml constraints.txt | $(BIN)/python
	$(PIP) install -c constraints.txt torch==2.13.0
	$(PIP) install -c constraints.txt -e '.[operator,jobs,dev]'
	touch $@

demo: $(STAMP)
	$(BIN)/python -m modelpress.jobs.examples.digits out/demo
	$(BIN)/modelpress run out/demo/compressedmodel.yaml

test: $(STAMP)
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check modelpress operator jobs tests benchmarks
	$(BIN)/ruff format --check modelpress operator jobs tests benchmarks

crd: $(STAMP)
	$(BIN)/modelpress crd > crds/compressedmodels.modelpress.io.yaml
	cp crds/compressedmodels.modelpress.io.yaml charts/modelpress/crds/
	$(BIN)/python -m modelpress.docs > docs/spec-reference.md

clean:
	rm -rf $(VENV) out build *.egg-info
