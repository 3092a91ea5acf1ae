# `make test` and `make demo` do all set-up on a fresh machine: they create .venv and install the
# package with its test tools, pinned to the versions CI ran (constraints.txt).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Offline: every model in the tests is built from a config; a missing weight must fail fast.
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 TOKENIZERS_PARALLELISM=false

.PHONY: install test demo bench paper constraints clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=23.2"
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

test: $(STAMP)
	$(VENV)/bin/lint-imports
	# two workers (pytest-xdist), one BLAS thread each: the suite's CPU-bound tests share 2 cores without
	# oversubscribing them (about half the wall-clock time of one worker on the 2-core CI machine)
	$(OFFLINE) OMP_NUM_THREADS=1 $(PY) -m pytest -q -n 2 tests

demo: $(STAMP)
	$(OFFLINE) $(PY) examples/demo.py --output-dir demo_output

bench: $(STAMP)
	$(OFFLINE) $(PY) benchmarks/run_all.py

# The paper on the real NSD (docs/paper.md): make paper NSD_ROOT=/data/nsd [PAPER_ARGS="--stages ce rl"].
# Uses every GPU of the machine through accelerate; resumable (run it again after a kill).
NSD_ROOT ?=
PAPER_ARGS ?=
paper: $(STAMP)
	@test -n "$(NSD_ROOT)" || { echo "make paper needs NSD_ROOT=<the NSD download> (docs/paper.md)"; exit 2; }
	$(VENV)/bin/python recipes/run_paper.py --nsd_root "$(NSD_ROOT)" --dry_run true $(PAPER_ARGS)
	$(VENV)/bin/accelerate launch recipes/run_paper.py --nsd_root "$(NSD_ROOT)" $(PAPER_ARGS)

# Record the exact environment (run after a successful `make test`).
constraints:
	$(PY) -m pip freeze --exclude-editable | grep -v '^-e ' > constraints.txt

clean:
	rm -rf $(VENV) demo_output bench_output .pytest_cache
