# qcc developer commands. `make demo` and `make test` do all set-up on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.deps-installed
export OMP_WAIT_POLICY := PASSIVE
export TVM_NUM_THREADS ?= 2

.PHONY: setup dev-install demo test test-fast lint bench clean

# Dependencies are installed once per pyproject.toml change; the strict editable install (fast) runs every
# time because a new module is only visible to mypy/import-linter after it (DESIGN.md, Layout).
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q -e '.[dev]' --config-settings editable_mode=strict
	touch $(STAMP)

dev-install: $(STAMP)
	$(PY) -m pip install -q --no-deps --no-build-isolation -e . --config-settings editable_mode=strict

setup: dev-install

demo: setup
	$(PY) examples/demo.py

lint: setup
	$(VENV)/bin/ruff check compiler passes costmodel backends tests benchmarks examples
	$(VENV)/bin/mypy -p qcc.ir -p qcc.passes
	$(VENV)/bin/lint-imports

test: lint
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

bench: setup
	$(PY) benchmarks/bench_fp32.py

clean:
	rm -rf build *.egg-info .pytest_cache .mypy_cache .ruff_cache
