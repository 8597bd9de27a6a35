"""Build and load gan_kernels._C with our AVX512 CPU kernels running on an AVX2 CPU (`make
avx512-emulation`; README, "Building").

    python tests/avx512_emulation/build.py   # build (incremental)

Our machines lack AVX-512, so the AVX512 builds of csrc/cpu/<op>_kernel.h, which every user with an
AVX-512 CPU runs, had never run here. This build compiles each of them again with ATen's AVX512
Vectorized on SIMDe's portable AVX-512 intrinsics (avx512_on_avx2.h: Debian's libsimde-dev, plus the
few intrinsics and SLEEF functions it lacks), into the slot of the AVX2 build: under
ATEN_CPU_CAPABILITY=avx2, ATen's own kernels run on AVX2 and ours run the AVX512 code, with its 16
float lanes, masked tails and AVX-512's comparison, blend and conversion rules as SIMDe implements
them. tests/conftest.py loads this build when GAN_KERNELS_AVX512_EMULATION=1.

What it does not check: the AVX-512 hardware itself, and SLEEF's AVX-512 exp, expm1, log1p and tanh,
which stand in as libm's, lane by lane.

Everything is compiled with hidden visibility: these kernels' 64-byte Vectorized<float> has the name
of libtorch's AVX2 one (at::vec::AVX2), and a call the dynamic linker bound to libtorch's copy would
read half a vector."""

import glob
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HERE = os.path.join(ROOT, "tests", "avx512_emulation")
OUT = os.path.join(ROOT, "build", "avx512-emulation")
SIMDE = "/usr/include/simde/x86/avx512.h"
# SIMDe's AVX-512 runs on AVX2 here; the rest of the build may use it too.
HOST_FLAGS = ["-mavx2", "-mfma", "-mf16c"]


def _write_if_changed(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if not os.path.exists(path) or open(path).read() != text:
        with open(path, "w") as f:
            f.write(text)


def kernel_source(kernel_header):
    """One kernel's AVX512 build in the AVX2 slot: csrc/cpu/<op>_kernel.h after avx512_on_avx2.h."""
    return f'#include "{os.path.join(HERE, "avx512_on_avx2.h")}"\n#include "cpu/{os.path.basename(kernel_header)}"\n'


def sources():
    """setup.py's sources, but for the AVX2 kernel builds, whose slot the emulated AVX512 builds take;
    each through a one-line file of its own (csrc/ops/x.cpp and csrc/cpu/x.cpp would both compile to
    x.o in one build directory)."""
    csrc = os.path.join(ROOT, "csrc")
    generated = os.path.join(ROOT, "build", "generated", "cpu")
    originals = [
        os.path.join(csrc, "module.cpp"),
        *sorted(glob.glob(os.path.join(csrc, "ops", "*.cpp"))),
        *sorted(glob.glob(os.path.join(csrc, "cpu", "*.cpp"))),
        *sorted(glob.glob(os.path.join(generated, "*_default.cpp"))),
        *sorted(glob.glob(os.path.join(generated, "*_avx512.cpp"))),
    ]
    paths = []
    for original in originals:
        path = os.path.join(OUT, "src", os.path.relpath(original, ROOT).replace(os.sep, "_"))
        _write_if_changed(path, f'#include "{original}"\n')
        paths.append(path)
    for header in sorted(glob.glob(os.path.join(csrc, "cpu", "*_kernel.h"))):
        path = os.path.join(OUT, "src", os.path.basename(header)[: -len(".h")] + "_avx512_on_avx2.cpp")
        _write_if_changed(path, kernel_source(header))
        paths.append(path)
    return paths


def load(verbose=False):
    """Builds (when out of date) and imports the extension as gan_kernels._C."""
    from torch.utils.cpp_extension import load as load_extension

    if not os.path.exists(SIMDE):
        raise SystemExit(f"{SIMDE} is missing: apt-get install libsimde-dev")
    if not glob.glob(os.path.join(ROOT, "build", "generated", "cpu", "*_default.cpp")):
        raise SystemExit("build/generated is missing: run `make build` first")
    module = load_extension(
        name="_C",
        sources=sources(),
        # setup.py's flags, but for -O2 (the build's time shows here, the kernels' speed does not).
        extra_cflags=["-O2", "-fopenmp", "-ffp-contract=off", "-Wno-unknown-pragmas", "-Wno-psabi", *HOST_FLAGS]
        + ["-fvisibility=hidden", "-fvisibility-inlines-hidden"],
        extra_ldflags=["-fopenmp"],
        extra_include_paths=[os.path.join(ROOT, "csrc"), os.path.join(ROOT, "build", "generated")],
        build_directory=OUT,
        verbose=verbose,
    )
    sys.modules["gan_kernels._C"] = module
    return module


if __name__ == "__main__":
    print(f"AVX512-on-AVX2 build: {load().__file__}")
