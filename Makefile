# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_STAMP := $(VENV)/.demo-installed
BENCH_STAMP := $(VENV)/.bench-installed

.PHONY: demo test bench compare clean

$(VENV)/.created:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	touch $@

# The demo needs the library and its CLI only; the tests need everything (Ray, moto, ...).
$(DEMO_STAMP): pyproject.toml $(VENV)/.created
	$(BIN)/python -m pip install --quiet -e '.[cli]'
	touch $@

$(STAMP): pyproject.toml $(VENV)/.created
	$(BIN)/python -m pip install --quiet -e '.[dev,cli]'
	touch $@

# The benchmarks' peers (openai) and chart (matplotlib); the tests smoke-run the benchmarks.
$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	touch $(BENCH_STAMP)

demo: $(DEMO_STAMP)
	bash examples/demo.sh $(BIN)

test: $(BENCH_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy --strict gemimg_async
	$(BIN)/pytest

bench: $(BENCH_STAMP)
	$(BIN)/python benchmarks/bench_memory.py

compare: $(BENCH_STAMP)
	$(BIN)/python benchmarks/compare.py

clean:
	rm -rf $(VENV) out .mypy_cache .ruff_cache .pytest_cache .hypothesis
