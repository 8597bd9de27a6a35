"""`make avx512-emulation` (tests/avx512_emulation) compiles our AVX512 kernels on SIMDe. Its test run
is outside `make test`; this compiles one kernel the way it does, so that a torch or SIMDe whose
headers it no longer covers fails here, not at the next manual run."""

import importlib.util
import os
import platform
import subprocess

import pytest
from torch.utils.cpp_extension import include_paths

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
_spec = importlib.util.spec_from_file_location(
    "avx512_emulation_build", os.path.join(HERE, "avx512_emulation", "build.py")
)
avx512_emulation = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(avx512_emulation)


@pytest.mark.skipif(platform.machine() != "x86_64", reason="SIMDe's AVX-512 runs on x86-64's AVX2 here")
@pytest.mark.skipif(not os.path.exists(avx512_emulation.SIMDE), reason="libsimde-dev is not installed")
def test_an_avx512_kernel_compiles_on_simde_to_avx2_code_alone(tmp_path):
    source = tmp_path / "bias_act.cpp"  # the kernel with the most of ATen's vector math
    source.write_text(avx512_emulation.kernel_source(os.path.join(ROOT, "csrc", "cpu", "bias_act_kernel.h")))
    torch_includes = [flag for path in include_paths() for flag in ("-isystem", path)]
    obj = tmp_path / "bias_act.o"
    compiled = subprocess.run(
        ["g++", "-std=c++17", "-O0", "-c", "-fPIC", *avx512_emulation.HOST_FLAGS, "-fvisibility=hidden"]
        + [f"-I{os.path.join(ROOT, 'csrc')}", f"-I{os.path.join(ROOT, 'build', 'generated')}", *torch_includes]
        + [str(source), "-o", str(obj)],
        capture_output=True,
        text=True,
    )
    # An intrinsic SIMDe lacks reaches GCC's own, which fails to inline without -mavx512f.
    assert compiled.returncode == 0, compiled.stderr[-3000:]
    code = subprocess.run(["objdump", "-d", str(obj)], capture_output=True, text=True, check=True).stdout
    assert "%zmm" not in code, "AVX-512 instructions in code that must run on AVX2"
    undefined = subprocess.run(["nm", "-u", str(obj)], capture_output=True, text=True, check=True).stdout
    assert "Sleef_" not in undefined, "a call into libtorch's AVX-512 SLEEF"
