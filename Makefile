# The two commands: `make demo` (the main job) and `make test` (the suite). Both create or reuse .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_VERSION := 2.13.0
STAMP := $(VENV)/.installed

.PHONY: venv test demo paper bench real-dimensions clean

venv: $(STAMP)

# torch is installed first and pinned, so nothing that depends on it pulls a CUDA build.
$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==$(TORCH_VERSION)
	$(PIP) install -q -e ".[all]"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q tests

demo: $(STAMP)
	$(PY) examples/demo/run_demo.py --output_dir outputs/demo

paper: $(STAMP)
	$(PY) examples/demo/run_paper.py --output_dir outputs/paper \
		--corpus_dir outputs/demo/corpus --components_dir outputs/demo/components

bench: $(STAMP)
	$(PY) benchmarks/run_benchmarks.py

# PART-2B's real shape from configs (random weights): parameters, memory, step and generation times on this CPU.
real-dimensions: $(STAMP)
	$(PY) benchmarks/real_dimensions.py

clean:
	rm -rf $(VENV) outputs .pytest_cache
