# Quick start: `make demo` and `make test` work on a fresh machine with python3, pip and make.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA ?= ../shared/data/lymphocytosis

.PHONY: demo test lint venv bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# The stamp files record which extras are installed, so a re-run installs nothing.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

# torch for the optional `cnn` extra (tested in CI): pin the CPU build first, since an unpinned
# `torch` resolves to a several-GB CUDA build; the extra's range (torch>=2.2) is then satisfied.
TORCH ?= torch==2.13.0

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test,dask]'
	# The CNN path is optional: without torch its tests skip, the rest still runs.
	($(BIN)/python -m pip install --quiet $(TORCH) && $(BIN)/python -m pip install --quiet -e '.[test,dask,cnn]') || \
		echo "warning: torch could not be installed; the CNN tests will be skipped" >&2
	touch $@ $(VENV)/.installed

venv: $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/lympho demo
	@echo "lympho is installed in $(VENV)/: '. $(BIN)/activate' puts the lympho command on your PATH"

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest -q

lint: $(VENV)/.installed-test
	$(BIN)/ruff check lympho_features tests benchmarks

bench: $(VENV)/.installed
	$(BIN)/python benchmarks/extract_speed.py --data $(DATA)/trainset
	$(BIN)/python benchmarks/cv_accuracy.py --data $(DATA)/trainset

clean:
	rm -rf artifacts/* reports/* .pytest_cache
