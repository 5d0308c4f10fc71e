# One-command entry points. `make demo` and `make test` run `setup` first (idempotent).
# `make bench` needs the demo's shards and runs (make demo first).
VENV ?= .venv
PY := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
DEMO ?= demo_out

.PHONY: setup test test-fast demo bench gpu-check clean

setup:
	@bash scripts/setup.sh

test: setup
	$(PY) -m pytest -v --durations=30 tests

# The developer's lane after each change: everything but the tests marked slow, mpi, slurm or dali
# (pyproject.toml declares the markers; `make test` and CI run them all).
test-fast: setup
	$(PY) -m pytest -q --durations=10 -m "not slow and not mpi and not slurm and not dali" tests

demo: setup
	@bash scripts/demo.sh $(DEMO)

bench: setup
	$(PY) hpc/bench/build.py
	$(PY) hpc/bench/synth_corridor.py
	$(PY) hpc/bench/loss_memory.py
	$(PY) hpc/bench/train_step.py
	$(PY) hpc/bench/loader.py --shards $(DEMO)/shards
	$(PY) hpc/bench/train_step.py --loader real --shards $(DEMO)/shards --models unet,sgmagnet
	$(PY) hpc/bench/predict_memory.py --checkpoint $(DEMO)/runs/unet
	$(PY) kernels/bench/bench_gated_loss.py
	$(PY) kernels/bench/bench_gated_softmax.py

# On a machine with a CUDA GPU (the device tool's lent GPU): kernel tests on CUDA, kernel and training-step
# benchmarks -> CSV rows + log in $$OUT (or bench_results/gpu/). Uses that machine's python3; no setup.
gpu-check:
	@bash scripts/gpu_check.sh

clean:
	rm -rf $(DEMO) .pytest_cache
