# Two commands for a fresh machine: `make demo` and `make test`.
# torch goes in first, pinned to the CPU wheel, so pip never pulls a CUDA build of several GB.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
STAMP  := $(VENV)/.autokd-installed

.PHONY: install demo lint test test-fast bench mutation clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMP): $(PY) pyproject.toml
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==$(TORCH_VERSION)
	$(PY) -m pip install -q -e ".[dev,onnx]"
	@touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/autokd search studies/digits.yaml --resume

lint: install
	$(PY) -m ruff check autokd tests benchmarks

test: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: install
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

bench: install
	$(PY) benchmarks/run_all.py

# Mutation testing of the core modules (slow; not part of `make test`): mutmut makes small bugs and runs
# the fast tests that call each mutated function; score and survivors -> benchmarks/results/mutation.json.
# MUTATION_ARGS="--modules pareto stopping --max-children 2" narrows it; results are kept in mutants/.
mutation: install
	nice -n 10 $(PY) benchmarks/mutation.py $(MUTATION_ARGS)

clean:
	rm -rf $(VENV) .cache reports/*/ runs/ mutants/
