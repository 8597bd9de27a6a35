# make test: build + all tests.  make bench: build + benchmarks.  Each installs what it needs first.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
TORCH_SPEC ?= torch==2.13.0

.PHONY: deps build cuda-check test bench clean

deps:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install $(TORCH_SPEC)
	@$(PYTHON) -c "import pytest, hypothesis, numpy, matplotlib, sklearn, tqdm, tensorboard" 2>/dev/null || \
		$(PIP) install pytest hypothesis numpy matplotlib scikit-learn tqdm tensorboard
	@command -v ninja >/dev/null || $(PIP) install ninja

build: deps
	$(PYTHON) setup.py build_ext --inplace

# Compile-checks the torch-free CUDA kernels with plain nvcc (sm_80, sm_90), and the CUDA branch of
# the torch glue against the headers every torch wheel ships: no GPU or CUDA build of torch needed.
cuda-check: build
	@if command -v nvcc >/dev/null; then \
		cmake -S . -B build/cuda-check -G Ninja >/dev/null && cmake --build build/cuda-check && \
		$(PYTHON) scripts/check_cuda_glue.py; \
	else echo "nvcc not found: skipping the CUDA compile check"; fi

test: build cuda-check
	$(PYTHON) -m pytest -q
	GAN_KERNELS_IMPL=reference $(PYTHON) -m pytest -q

bench: build
	$(PYTHON) benchmarks/run.py

clean:
	rm -rf build gan_kernels/*.so
