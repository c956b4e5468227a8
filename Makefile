# Two entry points for a fresh machine: `make demo` and `make test`.
# Each creates .venv, installs torch==2.13.0 first (the CPU build; an unpinned torch pulls CUDA),
# then this package with its demo and dev extras, then does its job.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

WHEEL_VENV ?= .venv-wheel

.PHONY: install demo eval test test-fast package-check check format clean

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[demo,dev]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/md2pr demo --output-dir runs/demo

test: install
	$(PY) -m pytest
	$(MAKE) package-check

# Build the sdist and the wheel, check their metadata, install the wheel (not editable) into a fresh venv and run
# tests/installed_smoke.py with it from an empty folder outside the source tree.
package-check: install
	rm -rf dist $(WHEEL_VENV)
	$(PY) -m build --outdir dist . > /dev/null
	$(PY) -m twine check --strict dist/*
	$(PYTHON) -m venv $(WHEEL_VENV)
	$(WHEEL_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(WHEEL_VENV)/bin/python -m pip install --quiet torch==2.13.0
	$(WHEEL_VENV)/bin/python -m pip install --quiet "$$(ls dist/*.whl)[demo]"
	smoke=$$(mktemp -d) && cp tests/installed_smoke.py $$smoke/ && cd $$smoke && \
		$(CURDIR)/$(WHEEL_VENV)/bin/python -I installed_smoke.py && rm -rf $$smoke

test-fast: install
	$(PY) -m pytest -m "not slow"

check: install
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff check --fix . && $(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) $(WHEEL_VENV) build dist *.egg-info .pytest_cache .ruff_cache
