"""`make wide-vectors` (tests/wide_vectors) rests on one edit of torch's vec_base.h: checked here against
the installed torch, so that a torch whose header changed fails `make test`, not the next manual run."""

import importlib.util
import os
import subprocess

import pytest
from torch.utils.cpp_extension import include_paths

HERE = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.util.spec_from_file_location("wide_vectors_build", os.path.join(HERE, "wide_vectors", "build.py"))
wide_vectors = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(wide_vectors)

# The widths ATen's AVX512 build has, asserted where the DEFAULT build includes its vectors as our
# kernels do (cpu/vec_step.h); AVX2 keeps its own.
PROBE = """
#define CPU_CAPABILITY {capability}
#define CPU_CAPABILITY_{capability}
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
static_assert(at::vec::Vectorized<float>::size() == {floats}, "float lanes");
static_assert(at::vec::Vectorized<double>::size() == {floats} / 2, "double lanes");
static_assert(at::vec::Vectorized<c10::BFloat16>::size() == 2 * {floats}, "bfloat16 lanes");
static_assert(at::vec::Vectorized<c10::Half>::size() == 2 * {floats}, "half lanes");
"""


@pytest.mark.parametrize("capability, floats", [("DEFAULT", 16), ("AVX2", 8)])
def test_the_widened_header_gives_avx512s_lane_counts_to_the_default_build_only(tmp_path, capability, floats):
    include = tmp_path / "include"
    wide_vectors.write_include(str(include))
    probe = tmp_path / "probe.cpp"
    probe.write_text(PROBE.format(capability=capability, floats=floats))
    flags = ["-mavx2", "-mfma", "-mf16c"] if capability == "AVX2" else []
    torch_includes = [flag for path in include_paths() for flag in ("-isystem", path)]
    compiled = subprocess.run(
        ["g++", "-std=c++17", "-fsyntax-only", *flags, f"-I{include}", *torch_includes, str(probe)],
        capture_output=True,
        text=True,
    )
    assert compiled.returncode == 0, compiled.stderr[-3000:]


def test_a_torch_header_without_the_generic_width_is_refused_by_name():
    with pytest.raises(RuntimeError, match="no longer sets the generic vector width"):
        wide_vectors.widened_vec_base("#define VECTOR_WIDTH 32\n")
