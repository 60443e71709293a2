# Two commands matter: `make demo` and `make test`. Both create or refresh .venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PIP    := $(BIN)/python -m pip --disable-pip-version-check -q

LINKED := $(VENV)/.linked
SOURCES := $(VENV)/.sources

.PHONY: demo test lint crd mutation clean system-packages FORCE

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstall when the dependency list or pins change; torch first (CPU wheel on disk).
$(STAMP): pyproject.toml constraints.txt | $(BIN)/python
	$(PIP) install -c constraints.txt torch==2.13.0 'setuptools>=77'
	$(PIP) install -c constraints.txt --config-settings editable_mode=strict -e '.[operator,jobs,dev]'
	touch $@

# The editable install is setuptools' *strict* mode: a link tree under build/ that maps
# operator/ -> modelpress/operator and jobs/ -> modelpress/jobs. operator/ has no
# __init__.py on purpose (a PEP 420 directory), so `python -m ...` from the repo root
# can never mistake it for the standard library's `operator`; the default (lenient)
# editable finder cannot serve such a subpackage, the link tree can. Added or removed
# source files need a relink (seconds, no dependency resolution).
$(LINKED): $(STAMP) $(SOURCES)
	$(PIP) install --no-deps --no-build-isolation --config-settings editable_mode=strict -e .
	touch $@

# The list of source files, rewritten only when a file is added or removed: edits to
# existing files reach the link tree through its symlinks and need no relink.
$(SOURCES): FORCE | $(BIN)/python
	@find src operator jobs -name '*.py' | sort | cmp -s - $@ || find src operator jobs -name '*.py' | sort > $@

FORCE:

demo: $(LINKED)
	$(BIN)/python -m modelpress.jobs.examples.digits out/demo
	$(BIN)/modelpress run out/demo/compressedmodel.yaml

# Debian packages the tests run for real (Prometheus for the canary analysis tests),
# installed when missing so `make test` works alone on a fresh machine.
SYSTEM_PACKAGES := prometheus

system-packages:
	@missing=""; for p in $(SYSTEM_PACKAGES); do command -v $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

test: $(LINKED) system-packages
	$(BIN)/pytest

# mypy checks the installed package ([tool.mypy] in pyproject.toml says why); its report
# names files in the link tree under build/, mapped back here to the files you edit.
MYPY_PATHS := -e 's|build/__editable__[^/]*/modelpress/operator/|operator/|' \
	-e 's|build/__editable__[^/]*/modelpress/jobs/|jobs/|' -e 's|build/__editable__[^/]*/modelpress/|src/modelpress/|'

lint: $(LINKED)
	$(BIN)/ruff check src operator jobs tests benchmarks
	$(BIN)/ruff format --check src operator jobs tests benchmarks
	@echo "$(BIN)/mypy -p modelpress"; $(BIN)/mypy -p modelpress > $(VENV)/mypy.out 2>&1; status=$$?; \
		sed $(MYPY_PATHS) $(VENV)/mypy.out; exit $$status

# Mutation testing of the decision modules against their fast tests (tests/mutation/run.py;
# writes benchmarks/results/mutation.json). Minutes, not seconds: not part of `make test`.
mutation: $(LINKED)
	nice -n 10 $(BIN)/python tests/mutation/run.py

crd: $(LINKED)
	$(BIN)/modelpress crd > crds/compressedmodels.modelpress.io.yaml
	cp crds/compressedmodels.modelpress.io.yaml charts/modelpress/crds/
	$(BIN)/python -m modelpress.docs > docs/spec-reference.md

clean:
	rm -rf $(VENV) out build *.egg-info
