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

# Two runs: the tests marked serial (kills, keystrokes or actors timed against a running search) alone, after
# the others, which run two at a time, a module per worker (pytest-xdist): most tests wait on one CLI
# process or one Ray worker and leave the second core idle. TEST_WORKERS=0 runs them in one process.
# Exit code 5 is pytest's "no test selected": PYTEST_ARGS may select tests of one run only.
TEST_WORKERS ?= 2
test: install
	@$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m "not serial" $(PYTEST_ARGS); parallel=$$?; \
	$(PY) -m pytest -q -m serial $(PYTEST_ARGS); serial=$$?; \
	for status in $$parallel $$serial; do [ $$status -eq 0 ] || [ $$status -eq 5 ] || exit $$status; done

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
