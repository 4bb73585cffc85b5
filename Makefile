# make demo: set up .venv (if needed) and run the main job on the bundled example slide.
# make test: same set-up, then the test suite (needs the shared data, see README).
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.wsipipe-installed
DEMO_OUT ?= demo-output

.PHONY: setup demo test bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt -e '.[test]' 2>&1 | { grep -v 'is ignored: it is neither a file nor a directory' || true; }
	touch $(STAMP)

EXAMPLE := examples/data/CMU-1-Small-Region.svs
WSIPIPE := $(VENV)/bin/wsipipe

# The bundled tumour model works at 48 µm/px, coarser than the small example region can give, so
# the demo segments a whole synthetic slide built from the example's own H&E pixels.
demo: $(STAMP) $(DEMO_OUT)/synthetic-slide.tif
	$(WSIPIPE) info $(EXAMPLE)
	$(WSIPIPE) tile $(EXAMPLE) -o $(DEMO_OUT)/CMU-1-Small-Region.tiles.zarr
	$(WSIPIPE) nuclei $(EXAMPLE) -o $(DEMO_OUT)/nuclei
	$(WSIPIPE) segment $(DEMO_OUT)/synthetic-slide.tif -o $(DEMO_OUT)/segment
	@echo "Tile store:  $(DEMO_OUT)/CMU-1-Small-Region.tiles.zarr"
	@echo "Nuclei:      $(DEMO_OUT)/nuclei/nuclei.geojson (open in QuPath), nuclei.csv"
	@echo "Tumour map:  $(DEMO_OUT)/segment/report.html"

$(DEMO_OUT)/synthetic-slide.tif: $(STAMP)
	$(WSIPIPE) synth $@ --width 24000 --height 16000 --mpp 0.5 --source $(EXAMPLE) --overwrite

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	for script in benchmarks/bench_*.py; do $(PY) $$script; done

clean:
	rm -rf $(DEMO_OUT) .pytest_cache
