# make test: build + all tests.  make bench: build + benchmarks.  Each installs what it needs first.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
TORCH_SPEC ?= torch==2.13.0

.PHONY: deps build cuda-check gpu-verify-dry test bench clean

deps:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install $(TORCH_SPEC)
	@$(PYTHON) -c "import pytest, hypothesis, numpy, matplotlib, sklearn" 2>/dev/null || \
		$(PIP) install pytest hypothesis numpy matplotlib scikit-learn
	@command -v ninja >/dev/null || $(PIP) install ninja

build: deps
	$(PYTHON) setup.py build_ext --inplace

# Compile-checks the torch-free CUDA kernels with plain nvcc (sm_80, sm_90), and the CUDA branch of
# the torch glue against the headers every torch wheel ships: no GPU or CUDA build of torch needed.
# CUDA_GLUE_TORCH_ROOT=<unpacked wheel>/torch checks the glue against another torch's headers, e.g.
# the GPU box's 2.11 (README, "GPU status").
cuda-check: build
	@if command -v nvcc >/dev/null; then \
		cmake -S . -B build/cuda-check -G Ninja >/dev/null && cmake --build build/cuda-check && \
		$(PYTHON) scripts/check_cuda_glue.py $(if $(CUDA_GLUE_TORCH_ROOT),--torch-root $(CUDA_GLUE_TORCH_ROOT)); \
	else echo "nvcc not found: skipping the CUDA compile check"; fi

# The GPU check's commands, assembled and checked on this machine (no GPU needed), so the script
# cannot rot between GPU runs.
gpu-verify-dry: build
	$(PYTHON) scripts/gpu_verify.py --dry-run first second

test: build cuda-check gpu-verify-dry
	$(PYTHON) -m pytest -q
	GAN_KERNELS_IMPL=reference $(PYTHON) -m pytest -q

bench: build
	$(PYTHON) benchmarks/run.py

clean:
	rm -rf build gan_kernels/*.so
