# segloop: `make demo` and `make test` set up .venv themselves on a fresh machine (Python 3.11+).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
DEMO   := .demo

.PHONY: setup demo test test-fast check bench clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "segloop needs Python 3.11 or newer; set PYTHON=python3.11")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[dev]'
	@rm -f $(VENV)/.installed-* && touch $@

setup: $(STAMP)

demo: setup
	$(BIN)/python examples/run_demo.py --workspace $(DEMO)

test: setup
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow and not postgres"

check: setup
	$(BIN)/ruff check src tests bench tools
	$(BIN)/mypy src tools
	$(BIN)/python tools/import_cycles.py src/segloop

bench: setup
	$(BIN)/python bench/pipeline.py

clean:
	rm -rf $(VENV) $(DEMO) .pytest_cache
