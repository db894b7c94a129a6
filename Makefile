# comptonsky developer entry points. `make demo` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv demo test test-fast lint bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml setup.py comptonsky/response/_sparse_kernels.c
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: venv
	$(VENV)/bin/comptonsky demo --output demo-output

test: venv
	$(PY) -m ruff check .
	$(PY) -m pytest -q -n 2 tests

test-fast: venv
	$(PY) -m pytest -q -n 2 -m "not slow" tests

lint: venv
	$(PY) -m ruff check .

bench: venv
	for b in benchmarks/bench_*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) demo-output build *.egg-info
