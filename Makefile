# make demo: set up .venv (if needed) and run the main job on the bundled example slide.
# make test: same set-up, then the test suite (needs the shared data, see README).
# make lint: ruff (lint and format) and mypy, as configured in pyproject.toml.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.wsipipe-installed
DEMO_OUT ?= demo-output

.PHONY: setup demo test lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt -e '.[test]' 2>&1 | { grep -v 'is ignored: it is neither a file nor a directory' || true; }
	touch $(STAMP)

EXAMPLE := examples/data/CMU-1-Small-Region.svs
WSIPIPE := $(VENV)/bin/wsipipe

demo: $(STAMP)
	$(WSIPIPE) info $(EXAMPLE)
	mkdir -p $(DEMO_OUT)
	$(WSIPIPE) tile $(EXAMPLE) -o $(DEMO_OUT)/CMU-1-Small-Region.tiles.zarr
	$(WSIPIPE) segment $(EXAMPLE) -o $(DEMO_OUT)/segment --nuclei
	@echo "Tile store:  $(DEMO_OUT)/CMU-1-Small-Region.tiles.zarr"
	@echo "Report:      $(DEMO_OUT)/segment/report.html (figures in report.json)"
	@echo "For QuPath:  $(DEMO_OUT)/segment/regions.geojson, nuclei.geojson"

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

bench: $(STAMP)
	for script in benchmarks/bench_*.py; do $(PY) $$script; done

clean:
	rm -rf $(DEMO_OUT) .pytest_cache
