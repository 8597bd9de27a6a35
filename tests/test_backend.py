"""The fallback policy: the package works without _C, says why once, and can be forced to the reference."""

import os
import shutil
import textwrap
import types
import warnings

import pytest
import torch
from fresh_imports import Case, run_fresh_imports
from helpers import OPS_REGISTERED

import gan_kernels
from gan_kernels import _backend

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CUDA_RUNS_HERE = OPS_REGISTERED and _backend._C.cuda_compiled and torch.cuda.is_available()


BLOCK_EXTENSION = """
    import importlib.abc, sys, warnings
    class BlockExtension(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name == "gan_kernels._C":
                raise ImportError("blocked by the test")
    sys.meta_path.insert(0, BlockExtension())
"""


def entry_point(*args, prelude=""):
    """`python -m gan_kernels ARGS`, after `prelude`."""
    return Case(
        textwrap.dedent(prelude)
        + textwrap.dedent(f"""
    import runpy, sys
    sys.argv = ["gan_kernels", *{list(args)!r}]
    runpy.run_module("gan_kernels", run_name="__main__")
    """)
    )


@pytest.fixture(scope="module")
def fresh_python(tmp_path_factory):
    """The result of each test's python below, by name: a fresh import of gan_kernels each, all run
    at once for this module (tests/fresh_imports.py)."""
    unbuilt = tmp_path_factory.mktemp("unbuilt")
    # A checkout without the compiled .so, imported from a user's script.
    shutil.copytree(
        os.path.join(ROOT, "gan_kernels"),
        unbuilt / "gan_kernels",
        ignore=shutil.ignore_patterns("*.so", "__pycache__"),
    )
    (unbuilt / "train.py").write_text(UNBUILT_TRAIN_PY)
    cases = {
        "without the extension": Case(
            textwrap.dedent(BLOCK_EXTENSION + WITHOUT_EXTENSION), env={"GAN_KERNELS_IMPL": "auto"}
        ),
        "unbuilt": Case(script=str(unbuilt / "train.py"), cwd=str(unbuilt), env={"GAN_KERNELS_IMPL": "auto"}),
        "forced reference": Case(FORCED_REFERENCE, env={"GAN_KERNELS_IMPL": "reference"}),
        "unknown impl": Case("import gan_kernels", env={"GAN_KERNELS_IMPL": "fast"}),
        "another torch": Case(textwrap.dedent(ANOTHER_TORCH + WITHOUT_EXTENSION), env={"GAN_KERNELS_IMPL": "auto"}),
        "entry point": entry_point(),
        "entry point without the extension": entry_point(prelude=BLOCK_EXTENSION),
    }
    if not CUDA_RUNS_HERE:
        cases["--require-cuda"] = entry_point("--require-cuda")
    return dict(zip(cases, run_fresh_imports(list(cases.values()))))


# One worker runs the module's fresh pythons, once, rather than each worker that gets one of its tests.
in_fresh_python = pytest.mark.xdist_group("test_backend fresh pythons")

WITHOUT_EXTENSION = """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import torch, gan_kernels
        from gan_kernels import reference
        x = torch.randn(2, 5, 3, 3, requires_grad=True)
        y = gan_kernels.pixel_norm(x)
        y.sum().backward()
        gan_kernels.nn.PixelNorm()(x)
    fallback = [w for w in caught if issubclass(w.category, gan_kernels.FallbackWarning)]
    print(len(fallback))
    print(fallback[0].message)
    print(gan_kernels.backend().impl)
    print(torch.equal(y, reference.pixel_norm(x)))
"""


ANOTHER_TORCH = """
    import torch, warnings
    torch.__version__ = "2.4.0"  # what a torch upgraded since the build would report
"""


@in_fresh_python
@pytest.mark.parametrize(
    "case, why",
    [
        ("without the extension", "blocked by the test"),
        # C++ extensions have no ABI promise across torch versions: one that loads may still crash
        # or compute wrongly.
        ("another torch", "it was built against torch {built}, and this is torch 2.4.0"),
    ],
)
def test_an_extension_that_cannot_be_used_warns_once_and_the_reference_runs(fresh_python, case, why):
    result = fresh_python[case]
    assert result.returncode == 0, result.stderr
    count, message, impl, equal = result.stdout.strip().splitlines()
    assert count == "1"
    assert "gan_kernels._C could not be loaded" in message and "(or rebuild)" in message
    assert why.format(built=_backend._C.torch_version) in message
    assert impl == "reference"
    assert equal == "True"


def test_an_extension_built_against_this_torch_is_used():
    assert _backend._other_torch(torch.__version__) is None
    assert _backend.C_ERROR is None and _backend._C is not None


UNBUILT_TRAIN_PY = """\
import warnings
warnings.simplefilter("always")
with warnings.catch_warnings(record=True) as caught:
    import gan_kernels
(w,) = [w for w in caught if issubclass(w.category, gan_kernels.FallbackWarning)]
print(w.filename, w.lineno, sep="|")
print(w.message)
print(gan_kernels.backend().reason)
"""


@in_fresh_python
def test_an_unbuilt_extension_is_named_as_such_and_the_warning_points_at_the_users_import(fresh_python):
    result = fresh_python["unbuilt"]
    assert result.returncode == 0, result.stderr
    location, message, reason = result.stdout.strip().splitlines()
    assert location == f"{result.args[1]}|4"  # python SCRIPT
    for text in (message, reason):
        assert "it is not built" in text and "circular import" not in text


FORCED_REFERENCE = """
import warnings
warnings.simplefilter("error")
import gan_kernels
print(gan_kernels.backend())
"""


@in_fresh_python
def test_forced_reference_is_silent_and_reported(fresh_python):
    result = fresh_python["forced reference"]
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "reference (forced by GAN_KERNELS_IMPL=reference)"


@in_fresh_python
def test_unknown_impl_is_a_clear_error(fresh_python):
    result = fresh_python["unknown impl"]
    assert result.returncode != 0
    assert "GAN_KERNELS_IMPL='fast' is not one of auto, reference" in result.stderr


def test_cuda_tensors_fall_back_with_one_warning_when_built_without_cuda(monkeypatch):
    import torch

    monkeypatch.setattr(_backend, "_C", types.SimpleNamespace(cuda_compiled=False, cuda_archs=[]))
    monkeypatch.setattr(_backend, "IMPL", "auto")
    monkeypatch.setattr(_backend, "_warned_devices", set())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert _backend.use_compiled(torch.device("cuda")) is False
        assert _backend.use_compiled(torch.device("cuda")) is False
        assert _backend.use_compiled(torch.device("cpu")) is True
    assert len(caught) == 1 and "built without CUDA kernels" in str(caught[0].message)
    assert "CUDA tensors use the reference" in _backend.backend().reason


@pytest.mark.skipif(not _backend.compiled_available(), reason="the reference path asks no transform probes")
def test_op_calls_outside_any_transform_skip_the_transform_probes(monkeypatch):
    """Every op call asks use_compiled, and most run with no dual level and no functorch transform:
    there it decides without calling the probes, which were most of a small op's Python time."""
    calls = []
    monkeypatch.setattr(_backend, "forward_ad_active", lambda *tensors: calls.append("forward_ad_active") and False)
    monkeypatch.setattr(_backend, "functorch_grad_active", lambda: calls.append("functorch_grad_active") and False)
    x = torch.randn(2, 8, requires_grad=True)
    gan_kernels.bias_act(gan_kernels.pixel_norm(x), act="lrelu").sum().backward()
    assert calls == []
    with torch.autograd.forward_ad.dual_level():  # a dual level: the probes decide
        gan_kernels.pixel_norm(x)
    assert calls == ["forward_ad_active", "functorch_grad_active"]


def test_backend_reports_this_build():
    info = gan_kernels.backend()
    if _backend.IMPL == "reference":
        assert info.impl == "reference"
    elif OPS_REGISTERED:
        assert info.impl == "compiled"
        assert info.cuda == _backend._C.cuda_compiled
    else:
        assert info.impl == "reference" and "could not be loaded" in info.reason


@in_fresh_python
def test_module_entry_point_prints_the_build_facts(fresh_python):
    result = fresh_python["entry point"]
    assert f"gan_kernels {gan_kernels.__version__}" in result.stdout
    assert "backend" in result.stdout
    if OPS_REGISTERED:
        assert result.returncode == 0, result.stderr
        assert "gan_kernels::pixel_norm_backward" in result.stdout
        assert f"built with  torch {_backend._C.torch_version}" in result.stdout
    else:
        assert result.returncode == 1


@in_fresh_python
def test_module_entry_point_fails_when_the_extension_does_not_load(fresh_python):
    # A GPU check that only ran `python -m gan_kernels` would otherwise go on to test the fallback.
    result = fresh_python["entry point without the extension"]
    assert result.returncode == 1
    assert "gan_kernels._C could not be loaded" in result.stderr and "blocked by the test" in result.stderr


@pytest.mark.skipif(
    CUDA_RUNS_HERE, reason="CUDA kernels and a GPU are present: tests/test_cuda.py checks that --require-cuda passes"
)
@in_fresh_python
def test_require_cuda_fails_without_cuda_kernels_or_gpu(fresh_python):
    result = fresh_python["--require-cuda"]
    assert result.returncode == 1
    assert "error: --require-cuda:" in result.stderr or "could not be loaded" in result.stderr


@pytest.mark.skipif(not OPS_REGISTERED, reason="gan_kernels._C is not built")
def test_extension_version_matches_the_package():
    assert _backend._C.__version__ == gan_kernels.__version__


@pytest.mark.skipif(not OPS_REGISTERED, reason="gan_kernels._C is not built")
def test_the_extension_was_built_from_the_activation_and_dtype_tables():
    """The kernels read gan_kernels/_activations.py and _dtypes.py through headers generated at build
    time: an extension built from other tables is stale."""
    from gan_kernels import _activations, _dtypes

    assert _backend._C.activations == [tuple(a) for a in _activations.ACTIVATIONS]
    assert dict(_backend._C.activation_constants) == _activations.CONSTANTS
    assert _backend._C.dtypes == [d.name for d in _dtypes.DTYPES]
