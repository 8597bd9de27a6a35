"""Build and load gan_kernels._C with its DEFAULT-capability CPU kernels at AVX-512's lane counts, on
any x86-64 CPU (`make wide-vectors`; README, "CPU builds").

    python tests/wide_vectors/build.py   # build (incremental)

ATen's AVX512 Vectorized holds 64 bytes (16 floats, 8 doubles, 32 halves or bfloat16s), its AVX2 and
generic DEFAULT ones 32. Our AVX512 kernel builds need a CPU with AVX-512 to run, which our machines
lack, so their logic at 16 float lanes (vector steps, tails, lane sums, strips) would first run on a
user's machine. Here the DEFAULT build of csrc/cpu/<op>_kernel.h is compiled with ATen's own
vec_base.h, copied with the generic Vectorized widened to 64 bytes: the same kernels, through ATen's
portable element loops, at AVX-512's widths. tests/conftest.py loads this build when
GAN_KERNELS_WIDE_VECTORS=1, and with ATEN_CPU_CAPABILITY=default the op tests run it.

What it does not check: AVX-512's instructions (ATen's vec512 specialisations, their rounding and
their NaN rules): only a CPU with AVX-512 runs those.

Everything is compiled with hidden visibility: the widened Vectorized<float> has the name and the
namespace (at::vec::DEFAULT) of libtorch's own, and a call that the dynamic linker bound to
libtorch's 32-byte copy would read past our 64-byte vectors."""

import glob
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "build", "wide-vectors")
# The generic Vectorized's width in vec_base.h, and what it becomes for CPU_CAPABILITY_DEFAULT.
GENERIC_WIDTH = "#define VECTOR_WIDTH 32\n#define int_vector __m256i"
WIDENED = """#if defined(CPU_CAPABILITY_DEFAULT)
#undef __at_align__
#define __at_align__ __attribute__((aligned(64)))
#define VECTOR_WIDTH 64
#else
#define VECTOR_WIDTH 32
#endif
#define int_vector __m256i"""


def widened_vec_base(text):
    """torch's ATen/cpu/vec/vec_base.h with the DEFAULT capability's vectors 64 bytes wide."""
    if text.count(GENERIC_WIDTH) != 1:
        raise RuntimeError(
            "ATen/cpu/vec/vec_base.h of this torch no longer sets the generic vector width as "
            f"{GENERIC_WIDTH!r}: update tests/wide_vectors/build.py"
        )
    return text.replace(GENERIC_WIDTH, WIDENED)


def _write_if_changed(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if not os.path.exists(path) or open(path).read() != text:
        with open(path, "w") as f:
            f.write(text)


def write_include(include_dir):
    """The widened vec_base.h under include_dir, which goes before torch's headers on the include path."""
    from torch.utils.cpp_extension import include_paths

    torch_header = os.path.join(include_paths()[0], "ATen", "cpu", "vec", "vec_base.h")
    with open(torch_header) as f:
        _write_if_changed(os.path.join(include_dir, "ATen", "cpu", "vec", "vec_base.h"), widened_vec_base(f.read()))


def sources():
    """setup.py's sources (the AVX2 and AVX512 builds too: the dispatch links to them), each through a
    one-line file of its own: csrc/ops/x.cpp and csrc/cpu/x.cpp would both compile to x.o in one build
    directory."""
    csrc = os.path.join(ROOT, "csrc")
    originals = [
        os.path.join(csrc, "module.cpp"),
        *sorted(glob.glob(os.path.join(csrc, "ops", "*.cpp"))),
        *sorted(glob.glob(os.path.join(csrc, "cpu", "*.cpp"))),
        *sorted(glob.glob(os.path.join(ROOT, "build", "generated", "cpu", "*.cpp"))),
    ]
    wrappers = []
    for original in originals:
        wrapper = os.path.join(OUT, "src", os.path.relpath(original, ROOT).replace(os.sep, "_"))
        text = f'#include "{original}"\n'
        if original.endswith("_default.cpp"):  # the build fails unless the widening reached the kernel
            text += 'static_assert(at::vec::Vectorized<float>::size() == 16, "the DEFAULT build is not widened");\n'
        _write_if_changed(wrapper, text)
        wrappers.append(wrapper)
    return wrappers


def load(verbose=False):
    """Builds (when out of date) and imports the wide-vector extension as gan_kernels._C."""
    from torch.utils.cpp_extension import load as load_extension

    if not glob.glob(os.path.join(ROOT, "build", "generated", "cpu", "*_default.cpp")):
        raise SystemExit("build/generated is missing: run `make build` first")
    include_dir = os.path.join(OUT, "include")
    write_include(include_dir)
    module = load_extension(
        name="_C",
        sources=sources(),
        # setup.py's flags, but for -O2 (the build's time shows, the kernels' speed does not).
        extra_cflags=["-O2", "-fopenmp", "-ffp-contract=off", "-Wno-unknown-pragmas", "-Wno-psabi"]
        + ["-fvisibility=hidden", "-fvisibility-inlines-hidden"],
        extra_ldflags=["-fopenmp"],
        extra_include_paths=[include_dir, os.path.join(ROOT, "csrc"), os.path.join(ROOT, "build", "generated")],
        build_directory=OUT,
        verbose=verbose,
    )
    sys.modules["gan_kernels._C"] = module
    return module


if __name__ == "__main__":
    print(f"wide-vector build: {load().__file__}")
