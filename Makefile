# Quick start:  make demo   (end-to-end demo)   |   make test   (the test suite)
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test test-fast docs lint bench clean

demo:
	scripts/bootstrap.sh
	$(PY) -m recsys_mt.demo $(ARGS)

test:
	scripts/bootstrap.sh dev
	$(PY) -m pytest -q $(ARGS)

test-fast:
	scripts/bootstrap.sh dev
	$(PY) -m pytest -q -m "not slow" $(ARGS)

docs:
	scripts/bootstrap.sh dev,docs
	$(PY) -m mkdocs build --strict --site-dir site

lint:
	scripts/bootstrap.sh dev
	$(VENV)/bin/ruff check src tests examples benchmarks
	$(VENV)/bin/ruff format --check src tests examples benchmarks

bench:
	scripts/bootstrap.sh dev,bench
	$(PY) benchmarks/train_throughput.py

clean:
	rm -rf $(VENV) site build dist .pytest_cache
