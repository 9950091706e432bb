# Each target makes its own virtual environment when it is missing.
# torch is installed first and pinned to the CPU build that this machine keeps on disk; the
# project itself only asks for torch>=2.2, so an existing CUDA build is left alone.
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0

.PHONY: test check demo bench system-deps clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==$(TORCH_VERSION)
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

system-deps:
	bash scripts/install-system-deps.sh

test: $(VENV)/.installed system-deps
	$(PY) -m pytest

# Lint, format and types: what .ci/run and the pre-commit hooks run.
check: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# Fuses the package's neuron sample (MAP2 + a phase plane) with the shipped model: demo/fused.tif, demo/side_by_side.png
# and the metric table against the classical methods.
demo: $(VENV)/.installed
	$(PY) examples/demo.py --out demo

# Side-by-side timings and the quality table; the quality and fine-tuning benchmarks need the
# development pairs in ../shared/data.
DATA ?= ../shared/data
bench: $(VENV)/.installed
	$(PY) benchmarks/scan.py
	$(PY) benchmarks/fuse_scaling.py
	$(PY) benchmarks/resume_check.py
	$(PY) benchmarks/cancel_latency.py
	$(PY) benchmarks/metrics_speed.py
	test ! -d $(DATA)/gfp_pc || $(PY) benchmarks/quality.py --data $(DATA)/gfp_pc

clean:
	rm -rf $(VENV) build dist .pytest_cache demo
