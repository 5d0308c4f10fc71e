# One-command entry points. `make demo` and `make test` run `setup` first (idempotent).
VENV ?= .venv
PY := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
DEMO ?= demo_out

.PHONY: setup test demo bench clean

setup:
	@bash scripts/setup.sh

test: setup
	$(PY) -m pytest -v --durations=15 tests

demo: setup
	@bash scripts/demo.sh $(DEMO)

bench: setup
	$(PY) hpc/bench/build.py
	$(PY) hpc/bench/loss_memory.py
	$(PY) hpc/bench/train_step.py
	$(PY) hpc/bench/loader.py --shards $(DEMO)/shards
	$(PY) hpc/bench/train_step.py --loader real --shards $(DEMO)/shards --models unet,sgmagnet

clean:
	rm -rf $(DEMO) .pytest_cache
