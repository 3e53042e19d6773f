# `make demo`: set up .venv if needed and run the whole pipeline on the bundled Wikipedia sample (CPU, minutes).
# `make test`: set up .venv if needed and run every test, slow ones included.
# pip compiles no bytecode: Python writes each module's the first time a process imports it, into the venv, so only
# the modules the pipeline and the tests use are compiled, and once, also where the environment turns that writing
# off (docs/benchmarks.md, "The test suite").
unexport PYTHONDONTWRITEBYTECODE
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CORES ?= 2

.PHONY: demo test test-fast settings lint report mlflow-ui clean

$(VENV)/.installed: pyproject.toml requirements-no-deps.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip==25.3
	$(BIN)/pip install --quiet --no-compile -e '.[test]'
	$(BIN)/pip install --quiet --no-compile --no-deps -r requirements-no-deps.txt
	touch $@

demo: $(VENV)/.installed
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/snakemake --cores $(CORES) all --configfile config.demo.yaml

# Three pytest workers, a test file each at a time (a file's tests share their fixtures: a Slurm cluster, a pipeline
# run): one for the files that mostly wait, two for those that compute (tests/conftest.py; docs/benchmarks.md, "The
# test suite").
test: $(VENV)/.installed
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/pytest -n 3 --dist loadfile --no-loadscope-reorder --durations=25

test-fast: $(VENV)/.installed
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/pytest -m "not slow"

# The files derived from src/bertpipe/settings.py (tests/unit/test_settings.py fails when they are stale).
settings: $(VENV)/.installed
	$(BIN)/bertpipe settings schema > workflow/schemas/config.schema.yaml
	$(BIN)/bertpipe settings docs > docs/settings.md

# ruff's rules are pyproject.toml's (pycodestyle errors and warnings, pyflakes, the order of imports); Snakemake's
# linter reads the workflow.
lint: $(VENV)/.installed
	$(BIN)/ruff check src tests bench
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/snakemake --lint --configfile config.demo.yaml

report: $(VENV)/.installed
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/snakemake --report report.html --configfile config.demo.yaml

# The demo's MLflow store (config mlflow.tracking_uri: null) on http://127.0.0.1:5000, after the URL of its
# experiment's runs in the model-training view: MLflow 3's UI otherwise opens on its GenAI pages (its mode is kept per
# browser). Without MLflow 3's job runner (GenAI scorers, which bertpipe does not use) and its worker processes.
MLFLOW_STORE := $(abspath results)/mlflow/mlflow.db
mlflow-ui: $(VENV)/.installed
	@test -f $(MLFLOW_STORE) || { echo "no MLflow store at $(MLFLOW_STORE): run make demo first"; exit 1; }
	@url=$$($(BIN)/bertpipe --tracking-uri sqlite:///$(MLFLOW_STORE) tracking runs-view --ui http://127.0.0.1:5000) \
		&& echo "the runs: $$url"
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false \
		$(BIN)/mlflow ui --backend-store-uri sqlite:///$(MLFLOW_STORE) --host 127.0.0.1 --port 5000

clean:
	rm -rf results resources logs .snakemake
