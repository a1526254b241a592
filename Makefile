# Quickstart targets. Both work on a fresh machine: they create .venv and install into it.
# On a CPU machine torch==2.13.0 is installed first (this platform carries its CPU wheel, so no
# CUDA packages are downloaded); if the system python already has torch (a GPU box), the venv
# sees it through --system-site-packages and pip keeps it.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
TORCH_SPEC ?= torch==2.13.0
export OMP_NUM_THREADS ?= 2

.PHONY: install demo test test-slow bench gpu-check clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@if $(PYTHON) -c "import torch" >/dev/null 2>&1; then \
	  echo "[skel] torch already installed for $(PYTHON): keeping it"; \
	  $(PYTHON) -m venv --system-site-packages $(VENV); \
	else \
	  $(PYTHON) -m venv $(VENV) && \
	  $(BIN)/python -m pip install -q --upgrade pip >/dev/null 2>&1; \
	  $(BIN)/python -m pip install -q "$(TORCH_SPEC)"; \
	fi
	$(BIN)/python -m pip install -q -e ".[test,viz,export]"
	@$(BIN)/python -c "import torch, skelcli; print('[skel] torch', torch.__version__, '| skelcli', skelcli.__version__)"
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/skel demo --out demo_out

# `make test` runs every test but the `slow` ones; `make test-slow` runs those (the demo-budget
# pretraining-gain tests, about 9 CPU-minutes). CI runs both; plain `pytest` runs everything.
PYTEST := OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n 2 --dist loadgroup --durations=15

test: $(STAMP)
	$(PYTEST) -m "not slow"

test-slow: $(STAMP)
	$(PYTEST) -m slow

bench: $(STAMP)
	$(BIN)/skel benchmark --measure-throughput --json docs/bench_cpu.json

# The GPU acceptance run (docs/benchmarks.md, "When you have a GPU"): exits 3 on a machine without CUDA.
gpu-check: $(STAMP)
	$(BIN)/skel gpu-check --out gpu_check

clean:
	rm -rf $(VENV) demo_out .pytest_cache
