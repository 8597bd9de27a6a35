"""Every test case parametrized with device="cuda" refuses the pure-PyTorch fallback: on a machine
whose build lacks CUDA kernels it fails instead of testing the reference on CUDA tensors and
passing (tests/test_cuda.py guards its own cases the same way). Forcing the reference with
GAN_KERNELS_IMPL=reference is the one exception: then the reference is what is meant to run.

With GAN_KERNELS_CUDA_EMULATION=1, gan_kernels._C is the CUDA emulation build (tests/cuda_emulation):
the CPU cases run our CUDA kernels, on the host; with GAN_KERNELS_CUDA_EMULATION=asan, its build
under AddressSanitizer. With GAN_KERNELS_AVX512_EMULATION=1, it is the build whose AVX2 slot runs
our AVX512 CPU kernels on SIMDe's AVX-512 (tests/avx512_emulation).

On a GPU every test runs with deterministic full-float32 cuDNN and cuBLAS (no TF32)."""

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
import torch  # noqa: E402
from gan_kernels import _backend  # noqa: E402

# On a GPU the tests compare numbers, ours against PyTorch's or two paths bit for bit, so its
# convolutions and products run in full float32 (cuDNN's default TF32 keeps 10 mantissa bits, far
# coarser than the float32 tolerances) and repeatably (cuDNN may otherwise pick algorithms whose sums
# differ between two backward passes of the same graph). No effect on the CPU.
torch.backends.cudnn.deterministic = True
torch.backends.cudnn.benchmark = False
torch.backends.cudnn.allow_tf32 = False
torch.backends.cuda.matmul.allow_tf32 = False


def runs_on_cuda(item):
    callspec = getattr(item, "callspec", None)
    return callspec is not None and callspec.params.get("device") == "cuda"


@pytest.hookimpl(trylast=True)  # after pytest-xdist's own
def pytest_collection_modifyitems(config, items):
    for item in items:
        if runs_on_cuda(item) and _backend.IMPL != "reference":
            item.add_marker(pytest.mark.filterwarnings("error::gan_kernels.FallbackWarning"))
    if getattr(config.option, "loadgroup", False):  # set in xdist workers under --dist loadgroup
        _keep_xdist_groups(items)


def _keep_xdist_groups(items):
    """Keeps --dist loadgroup's groups: one gloo job at a time, the fresh-python tests together, the
    2^31-element CUDA tests one by one. pytest-xdist 3.8 names an item's group by appending "@group"
    to its legacy ``_nodeid``, which pytest 9.2 no longer reads (nodeid comes from the structured
    ``_id``): the groups were silently lost, and grouped tests ran on every worker at once
    (pytest-xdist#1386). The suffix is carried over to ``_id``; should that not take either, the run
    stops here rather than run ungrouped."""
    for item in items:
        groups = sorted(
            {str(m.args[0] if m.args else m.kwargs.get("name", "default")) for m in item.iter_markers("xdist_group")}
        )
        if not groups:
            continue
        suffix = f"@{'_'.join(groups)}"
        if not item.nodeid.endswith(suffix) and hasattr(item, "_id"):
            from _pytest.nodes import NodeId

            item._id = NodeId.parse(item.nodeid + suffix)
        if not item.nodeid.endswith(suffix):
            raise pytest.UsageError(
                f"--dist loadgroup cannot put {item.nodeid!r} in its group {groups}: this pytest and "
                "pytest-xdist do not group (tests/conftest.py)"
            )


@pytest.fixture(autouse=True)
def cuda_cases_run_our_cuda_kernels(request):
    # The warning comes once per process, so the backend itself is checked too.
    if runs_on_cuda(request.node) and _backend.IMPL != "reference":
        info = gan_kernels.backend()
        assert info.impl == "compiled" and info.cuda, f"a CUDA case would only test the fallback: {info}"
