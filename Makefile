# Two commands a new user needs:  `make demo` (set up, then enrich the sample catalog)  and  `make test`.
PY ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# Spark's Python workers and the spark-submit driver must use the project's interpreter.
export PATH := $(BIN):$(PATH)
export PYSPARK_PYTHON := $(BIN)/python
export PYSPARK_DRIVER_PYTHON := $(BIN)/python

.PHONY: setup demo test lint sample dist clean jvm-cache

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@$(PY) jobs/runtime/preflight.py
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test,airflow]'
	conf="$$($(BIN)/python -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))')/conf" && \
	  mkdir -p "$$conf" && cp jobs/conf/log4j2.properties "$$conf/"
	@touch $(STAMP)

demo: setup
	$(BIN)/spark-submit jobs/enrich.py

test: setup
	$(BIN)/python -m pytest

# Optional: the driver JVM's class archive, which cold runs map instead of loading Spark's classes (README).
jvm-cache: setup
	$(BIN)/python -m jobs.runtime.jvm_cache build

# ruff, then mypy over the library packages (configured in pyproject.toml); CI runs this before the tests.
lint: setup
	$(BIN)/ruff check .
	$(BIN)/python -m mypy

# The cluster artifact the DAGs ship: dist/catalog_enrich.zip (--py-files) and dist/catalog_enrich_main.py.
dist: setup
	$(BIN)/python -m jobs.package

sample: setup
	$(BIN)/python -m jobs.make_sample_catalog

clean:
	rm -rf lake dist .pytest_cache
