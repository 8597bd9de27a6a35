"""Every test case parametrized with device="cuda" refuses the pure-PyTorch fallback: on a machine
whose build lacks CUDA kernels it fails instead of testing the reference on CUDA tensors and
passing (tests/test_cuda.py guards its own cases the same way). Forcing the reference with
GAN_KERNELS_IMPL=reference is the one exception: then the reference is what is meant to run.

With GAN_KERNELS_CUDA_EMULATION=1, gan_kernels._C is the CUDA emulation build (tests/cuda_emulation):
the CPU cases run our CUDA kernels, on the host; with GAN_KERNELS_CUDA_EMULATION=asan, its build
under AddressSanitizer. With GAN_KERNELS_AVX512_EMULATION=1, it is the build whose AVX2 slot runs
our AVX512 CPU kernels on SIMDe's AVX-512 (tests/avx512_emulation)."""

import importlib.util
import os

import pytest


def _build_script(folder):
    """tests/<folder>/build.py, imported by its path."""
    spec = importlib.util.spec_from_file_location(
        f"{folder}_build", os.path.join(os.path.dirname(__file__), folder, "build.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


if os.environ.get("GAN_KERNELS_CUDA_EMULATION") in ("1", "asan"):
    _build_script("cuda_emulation").load(address_sanitizer=os.environ["GAN_KERNELS_CUDA_EMULATION"] == "asan")
elif os.environ.get("GAN_KERNELS_AVX512_EMULATION") == "1":
    _build_script("avx512_emulation").load()

import gan_kernels  # noqa: E402
from gan_kernels import _backend  # noqa: E402


def runs_on_cuda(item):
    callspec = getattr(item, "callspec", None)
    return callspec is not None and callspec.params.get("device") == "cuda"


def pytest_collection_modifyitems(items):
    for item in items:
        if runs_on_cuda(item) and _backend.IMPL != "reference":
            item.add_marker(pytest.mark.filterwarnings("error::gan_kernels.FallbackWarning"))


@pytest.fixture(autouse=True)
def cuda_cases_run_our_cuda_kernels(request):
    # The warning comes once per process, so the backend itself is checked too.
    if runs_on_cuda(request.node) and _backend.IMPL != "reference":
        info = gan_kernels.backend()
        assert info.impl == "compiled" and info.cuda, f"a CUDA case would only test the fallback: {info}"
