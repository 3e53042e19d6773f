# `make demo`: set up .venv if needed and run the whole pipeline on the bundled Wikipedia sample (CPU, minutes).
# `make test`: set up .venv if needed and run every test, slow ones included.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CORES ?= 2

.PHONY: demo test test-fast lint clean

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip==25.3
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

demo: $(VENV)/.installed
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/snakemake --cores $(CORES) --configfile config.demo.yaml all

test: $(VENV)/.installed
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/pytest

test-fast: $(VENV)/.installed
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/pytest -m "not slow"

lint: $(VENV)/.installed
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/snakemake --lint --configfile config.demo.yaml

clean:
	rm -rf results resources logs .snakemake
