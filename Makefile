# `make test` and `make demo` do all set-up on a fresh machine: they create .venv and install the
# package with its test tools, pinned to the versions CI ran (constraints.txt).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Offline: every model in the tests is built from a config; a missing weight must fail fast.
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 TOKENIZERS_PARALLELISM=false

.PHONY: install test demo bench constraints clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=23.2"
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

test: $(STAMP)
	$(VENV)/bin/lint-imports
	$(OFFLINE) $(PY) -m pytest -q tests

demo: $(STAMP)
	$(OFFLINE) $(PY) examples/demo.py --output-dir demo_output

bench: $(STAMP)
	$(OFFLINE) $(PY) benchmarks/run_all.py

# Record the exact environment (run after a successful `make test`).
constraints:
	$(PY) -m pip freeze --exclude-editable | grep -v '^-e ' > constraints.txt

clean:
	rm -rf $(VENV) demo_output bench_output .pytest_cache
