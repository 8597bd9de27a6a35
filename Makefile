# make test: build + all tests.  make bench: build + benchmarks.  Each installs what it needs first.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
TORCH_SPEC ?= torch==2.13.0
# The formatters are pinned: another version formats differently and would fail `make lint`.
RUFF_VERSION = 0.17.6
CLANG_FORMAT_VERSION = 23.1.5
CXX_SOURCES = $(shell find csrc tests/cuda_emulation tests/avx512_emulation -name '*.h' -o -name '*.cpp' -o -name '*.cu' -o -name '*.cuh')
# The test runners are pinned: a new pytest once silently turned off pytest-xdist's --dist loadgroup
# (tests/conftest.py), and CI's pip takes whatever is newest.
TEST_TOOLS = pytest==9.2.0 pytest-xdist==3.8.0 hypothesis==6.170.29
TEST_TOOLS_INSTALLED = import importlib.metadata as m; \
	assert all(m.version(p) == v for p, v in (t.split('==') for t in '$(TEST_TOOLS)'.split()))
# cuobjdump and the nvdisasm it runs, for the machine-code audit where the CUDA toolkit lacks them
# (CI's does); pinned, as the audit parses the text of their disassembly.
SASS_TOOLS_VERSION = 13.5.37
SASS_TOOLS = nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm
SASS_TOOLS_INSTALLED = import importlib.metadata as m; \
	assert all(m.version(p) == '$(SASS_TOOLS_VERSION)' for p in '$(SASS_TOOLS)'.split())
# Every pytest run is spread over TEST_WORKERS processes (pytest-xdist; `logical`: one per logical
# CPU, where `auto` would count physical cores when psutil is installed; 0: in this process).
# --dist loadgroup keeps the tests of an xdist_group on one worker: the distributed tests share one
# spawned process group, and the tests that start gloo jobs run one at a time.
TEST_WORKERS ?= logical
PYTEST = $(PYTHON) -m pytest -q -n $(TEST_WORKERS) --dist loadgroup

.PHONY: deps build lint format cuda-check gpu-verify-dry cuda-emulation avx512-emulation test bench clean

deps:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install $(TORCH_SPEC)
	@$(PYTHON) -c "$(TEST_TOOLS_INSTALLED)" 2>/dev/null || $(PIP) install $(TEST_TOOLS)
	@$(PYTHON) -c "import numpy, matplotlib, sklearn, tqdm, tensorboard" 2>/dev/null || \
		$(PIP) install numpy matplotlib scikit-learn tqdm tensorboard
	@command -v ninja >/dev/null || $(PIP) install ninja
	@$(PYTHON) -m ruff --version 2>/dev/null | grep -q "$(RUFF_VERSION)" || $(PIP) install ruff==$(RUFF_VERSION)
	@clang-format --version 2>/dev/null | grep -q "version $(CLANG_FORMAT_VERSION)" || \
		$(PIP) install clang-format==$(CLANG_FORMAT_VERSION)
	@test -e /usr/include/simde/x86/avx512.h || ! command -v apt-get >/dev/null || \
		apt-get install -y -q libsimde-dev >/dev/null 2>&1 || \
		echo "libsimde-dev could not be installed: the AVX-512 emulation's compile test will skip"

# `python -m gan_kernels` fails when the built extension cannot be loaded (an undefined symbol, say):
# the tests would otherwise pass on the reference fallback.
build: deps
	$(PYTHON) setup.py build_ext --inplace
	$(PYTHON) -m gan_kernels

# Compile-checks the torch-free CUDA kernels with plain nvcc, and the CUDA branch of the torch glue
# against the headers every torch wheel ships: no GPU or CUDA build of torch needed. CMake builds
# sm_80 only: the audit below compiles sm_90 with the same flags (both read csrc/cuda/nvcc_flags.txt),
# and building it twice cost 25 s of make test.
# CUDA_GLUE_TORCH_ROOT=<unpacked wheel>/torch checks the glue against another torch's headers, e.g.
# the GPU box's 2.11 (README, "GPU status"). Then the machine-code audit (scripts/sass_audit.py, about
# 30 s on 2 cores; a source compiled before the same way comes from build/sass-audit-cache): fails
# when a kernel spills or uses local memory or a loop loses its 16-byte accesses (its WIDE_LOOPS); its
# table is in build/sass-audit/audit.json.
# GAN_KERNELS_REQUIRE_NVCC=1 (CI sets it) makes a missing nvcc an error rather than a skip.
cuda-check: build
	@if command -v nvcc >/dev/null; then \
		cmake -S . -B build/cuda-check -G Ninja -DCMAKE_CUDA_ARCHITECTURES=80 >/dev/null && \
		cmake --build build/cuda-check && \
		$(PYTHON) scripts/check_cuda_glue.py $(if $(CUDA_GLUE_TORCH_ROOT),--torch-root $(CUDA_GLUE_TORCH_ROOT)) && \
		{ $(PYTHON) -c "$(SASS_TOOLS_INSTALLED)" 2>/dev/null || \
			$(PIP) install $(SASS_TOOLS:%=%==$(SASS_TOOLS_VERSION)); } && \
		$(PYTHON) scripts/sass_audit.py --json build/sass-audit/audit.json; \
	elif [ -n "$(GAN_KERNELS_REQUIRE_NVCC)" ]; then \
		echo "nvcc not found, and GAN_KERNELS_REQUIRE_NVCC is set: no CUDA compile check or audit" >&2; exit 1; \
	else echo "nvcc not found: skipping the CUDA compile check"; fi

# The GPU check's commands, assembled and checked on this machine (no GPU needed), so the script
# cannot rot between GPU runs.
gpu-verify-dry: build
	$(PYTHON) scripts/gpu_verify.py --dry-run first second

# Our CUDA kernels run on this machine's CPU (tests/cuda_emulation: each CUDA thread a fiber), so
# that the CUDA tests check their arithmetic, indexing, barriers and launch configurations without a
# GPU: tests/test_cuda.py's path cases and the op contracts (gradcheck, gradgradcheck, opcheck). Where
# the compiler has AddressSanitizer's runtime, the emulation is built and run under it, with the CPU
# output cache off so that every tensor gets redzones: a kernel that reads or writes outside a tensor
# fails the run, its report on stderr (hence --capture=sys). libstdc++ is preloaded with the runtime,
# which otherwise finds no __cxa_throw to forward our ops' exceptions to (python loads libstdc++ later,
# with torch). The fibers switch stacks with x86-64 code; elsewhere this is skipped.
CUDA_EMULATION_TESTS = tests/test_cuda.py tests/test_contracts.py
# A python started with the runtime preloaded must run and have it (a machine that limits virtual
# memory cannot reserve the sanitizer's shadow memory), and the alignment check's runtime must load.
ASAN_PRELOAD = ASAN_OPTIONS=detect_leaks=0 \
	LD_PRELOAD="$(shell $(CXX) -print-file-name=libasan.so) $(shell $(CXX) -print-file-name=libstdc++.so.6)"
ASAN_WORKS = $(shell $(ASAN_PRELOAD) $(PYTHON) -c "import ctypes; ctypes.CDLL(None).__asan_init; \
	ctypes.CDLL('$(shell $(CXX) -print-file-name=libubsan.so)'); print('yes')" 2>/dev/null)
CUDA_EMULATION_ENV = $(if $(ASAN_WORKS),GAN_KERNELS_CUDA_EMULATION=asan GAN_KERNELS_CPU_CACHE_MB=0 $(ASAN_PRELOAD), \
	GAN_KERNELS_CUDA_EMULATION=1)

cuda-emulation: build
	@if [ "$$(uname -m)" = x86_64 ]; then \
		$(CUDA_EMULATION_ENV) $(PYTHON) tests/cuda_emulation/build.py && \
		$(CUDA_EMULATION_ENV) $(PYTEST) --capture=sys -k "not compile" $(CUDA_EMULATION_TESTS); \
	else echo "the CUDA emulation needs x86-64: skipping"; fi

# Our vectorised CPU kernels and torch's own (the reference) compute differently per instruction set:
# the op tests run again under every other CPU capability this machine's CPU has, with the
# compiled ops, and the NaN/inf definition tests with the reference too. Inductor's cache does not
# key on the capability (a kernel cached under one gave wrong values under another), hence one each.
CAPABILITY_TESTS = tests/test_bias_act.py tests/test_pixel_norm.py tests/test_minibatch_std.py tests/test_minibatch_discrimination.py \
	tests/test_gradient_penalty.py tests/test_spectral_norm.py tests/test_properties.py tests/test_contracts.py

# The op tests with our AVX512 CPU kernels on SIMDe's AVX-512, on an AVX2 CPU (tests/avx512_emulation):
# the builds every AVX-512 CPU runs, which no machine of ours can. Not part of `make test` (it builds
# the extension a second time: about 3.5 minutes on 2 cores, tests included); test_avx512_emulation.py,
# in make test, compiles one kernel that way.
avx512-emulation: build
	@grep -qw avx2 /proc/cpuinfo || { echo "the AVX-512 emulation runs on AVX2: skipping"; exit 0; }; \
		$(PYTHON) tests/avx512_emulation/build.py && \
		GAN_KERNELS_AVX512_EMULATION=1 ATEN_CPU_CAPABILITY=avx2 $(PYTEST) -k "not compile and not opcheck" \
			$(CAPABILITY_TESTS)

# The second pass, with the pure-PyTorch reference forced: the files that test the ops' two
# implementations. The layers, penalties and examples above the ops call the same public functions;
# the monitor, losses, stabilizers, distributed helpers, examples and tools do not depend on the
# backend, and run once, with the compiled ops. opcheck calls the registered ops themselves, whatever
# GAN_KERNELS_IMPL says: the first pass has run it.
REFERENCE_TESTS = $(CAPABILITY_TESTS) tests/test_backend.py tests/test_end_to_end.py tests/test_equalized.py \
	tests/test_penalties.py tests/test_path_length.py tests/test_readme.py

# Style: ruff (format + pyflakes/pycodestyle errors) for Python, clang-format for C++ and CUDA.
# `make format` applies both.
lint: deps
	$(PYTHON) -m ruff format --check .
	$(PYTHON) -m ruff check .
	clang-format --dry-run --Werror $(CXX_SOURCES)

format: deps
	$(PYTHON) -m ruff format .
	clang-format -i $(CXX_SOURCES)

test: lint build cuda-check gpu-verify-dry cuda-emulation
	$(PYTEST)
	GAN_KERNELS_IMPL=reference $(PYTEST) -k "not opcheck" $(REFERENCE_TESTS)
	@for capability in $$($(PYTHON) scripts/cpu_capabilities.py); do \
		echo "ATEN_CPU_CAPABILITY=$$capability"; \
		export TORCHINDUCTOR_CACHE_DIR=$(CURDIR)/build/inductor-$$capability; \
		ATEN_CPU_CAPABILITY=$$capability $(PYTEST) -k "not compile and not opcheck" \
			$(CAPABILITY_TESTS) || exit 1; \
		ATEN_CPU_CAPABILITY=$$capability GAN_KERNELS_IMPL=reference $(PYTEST) \
			-k "nan or visible or diverged" $(CAPABILITY_TESTS) || exit 1; \
	done

bench: build
	$(PYTHON) benchmarks/run.py

clean:
	rm -rf build gan_kernels/*.so
