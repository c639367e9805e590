# The two commands: `make demo` (the main job) and `make test` (the suite). Both create or reuse .venv, installed
# from requirements/lock.txt (exact versions). `make lock` refreshes the lock; `make test-latest` runs the suite on
# the newest releases setup.py allows, in .venv-latest, ignoring the lock; `make outdated` reports the releases beyond
# the lock and setup.py's caps (docs/maintaining.md).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_VERSION := 2.13.0
LOCK := requirements/lock.txt
STAMP := $(VENV)/.installed
LATEST_VENV := .venv-latest

.PHONY: venv test demo components augmentation paper bench real-dimensions lock outdated test-latest repeat-multi-rank clean

venv: $(STAMP)

# torch is installed first and pinned, so nothing that depends on it pulls a CUDA build.
$(STAMP): setup.py $(LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c $(LOCK) torch==$(TORCH_VERSION)
	$(PIP) install -q -c $(LOCK) -e ".[all]"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q tests

demo: $(STAMP)
	$(PY) examples/demo/run_demo.py --output_dir outputs/demo

# The demo's pretrained stand-ins (speech encoder, LLM, tokenizer), trained once and shipped in examples/demo/components.
components: $(STAMP)
	$(PY) examples/demo/pretrain.py --output_dir examples/demo/components

# What each augmentation of the demo encoder buys on held-out voices (5 encoder trainings; run `make components` first).
augmentation: $(STAMP)
	$(PY) examples/demo/augmentation_ablation.py --output_dir outputs/augmentation

paper: $(STAMP)
	$(PY) examples/demo/run_paper.py --output_dir outputs/paper --corpus_dir outputs/demo/corpus

bench: $(STAMP)
	$(PY) benchmarks/run_benchmarks.py

# Re-resolves every dependency with pip's resolver (what an install today would get) and rewrites the lock.
lock:
	$(PYTHON) requirements/lock.py --torch $(TORCH_VERSION) --output $(LOCK)

# For each direct dependency: the locked version, the newest on the index, whether setup.py admits it and whether it
# installs here (pip dry runs; changes nothing, always exits 0, flags drift in its last lines).
outdated:
	$(PYTHON) requirements/outdated.py --torch $(TORCH_VERSION)

# The drift check: the drift report, then the suite on the newest releases within setup.py's ranges (torch stays at
# the CPU build).
test-latest:
	test -x $(LATEST_VENV)/bin/python || $(PYTHON) -m venv $(LATEST_VENV)
	$(LATEST_VENV)/bin/python -m pip install -q --upgrade pip
	$(MAKE) --no-print-directory outdated PYTHON=$(LATEST_VENV)/bin/python
	$(LATEST_VENV)/bin/python -m pip install -q torch==$(TORCH_VERSION)
	$(LATEST_VENV)/bin/python -m pip install -q --upgrade --upgrade-strategy eager torch==$(TORCH_VERSION) -e ".[all]"
	$(LATEST_VENV)/bin/python -m pip list --format freeze | grep -iE "^(torch|transformers|peft|accelerate|deepspeed|datasets|huggingface.hub|tokenizers)=="
	$(LATEST_VENV)/bin/python -m pytest -q tests

# Every multi-rank test file ROUNDS times in a row (about 5 min a round on 2 idle cores); fails on the first failed
# run or abort message (docs/testing.md). Run it after touching process-group set-up or teardown.
ROUNDS ?= 20
repeat-multi-rank: $(STAMP)
	$(PY) tests/repeat_multi_rank.py --rounds $(ROUNDS)

# PART-2B's real shape from configs (random weights): parameters, memory, step and generation times on this CPU.
real-dimensions: $(STAMP)
	$(PY) benchmarks/real_dimensions.py

clean:
	rm -rf $(VENV) $(LATEST_VENV) outputs .pytest_cache
