# The two commands of the README: `make demo` (the whole workflow on the built-in demo data) and `make test`.
# Both create .venv when missing (and re-install when pyproject.toml or constraints.txt change).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CORES ?= 2
# Workflow rules and tests call the `dst` and `snakemake` commands of the project's environment.
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: demo test test-fast venv lint clean-demo help bench bench-deps

help:
	@echo "make demo   - run the whole workflow (data -> train -> export -> evaluate -> report) on the demo data"
	@echo "make test   - run the full test suite (real DeepSpeed ranks, real SLURM, real MLflow server)"
	@echo "make bench  - side-by-side benchmarks against peers (writes benchmarks/results/latest.{json,md})"

$(STAMP): pyproject.toml constraints.txt scripts/bootstrap.sh
	VENV=$(VENV) scripts/bootstrap.sh
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/snakemake all --profile profiles/local --cores $(CORES) --configfile config/demo.yaml
	@echo
	@echo "Report:     results/demo/report.md"
	@echo "MLflow UI:  $(VENV)/bin/mlflow ui --backend-store-uri sqlite:///mlflow.db   (then open the runs page)"
	@url=$$($(VENV)/bin/dst track url --experiment dst-demo --tracking-uri sqlite:///mlflow.db) && \
		echo "Runs page:  $$url"

test: $(STAMP)
	$(PY) -m pytest -ra

test-fast: $(STAMP)
	$(PY) -m pytest -ra -m "not slurm and not slow"

lint: $(STAMP)
	$(VENV)/bin/snakemake --lint --profile profiles/local --configfile config/demo.yaml

clean-demo:
	rm -rf datasets/raw/demo datasets/prepared/demo runs/demo results/demo .snakemake

# SpikingJelly is a peer we benchmark against, never a dependency: it requires torchvision/torchaudio (which would
# pull a CUDA torch), so it is installed with --no-deps, plus its one runtime need, loguru.
bench-deps: $(STAMP)
	$(VENV)/bin/pip install -q -c constraints.txt --no-deps spikingjelly==2.0.0 loguru

bench: bench-deps
	$(PY) benchmarks/run_all.py
