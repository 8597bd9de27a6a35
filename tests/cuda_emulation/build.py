"""Build and load the CUDA emulation extension (README.md beside this): gan_kernels._C with the CUDA
kernels of csrc/cuda compiled for the host and registered for CPU tensors in place of the CPU kernels.

    python tests/cuda_emulation/build.py   # build (incremental)

tests/conftest.py calls load() when GAN_KERNELS_CUDA_EMULATION is 1 (or asan: the build under
AddressSanitizer), before gan_kernels is imported."""

import contextlib
import glob
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HERE = os.path.join(ROOT, "tests", "cuda_emulation")
OUT = os.path.join(ROOT, "build", "cuda-emulation")
KERNELS_LIBRARY = "gan_kernels_emulated_kernels"


def _balanced_end(text, start, open_char, close_char):
    """The index just past the bracket that closes the one at text[start]."""
    depth = 0
    for i in range(start, len(text)):
        if text[i] == open_char:
            depth += 1
        elif text[i] == close_char:
            depth -= 1
            if depth == 0:
                return i + 1
    raise ValueError(f"unbalanced {open_char} at offset {start}")


def _kernel_start(text, end):
    """Where the kernel expression that ends at text[end] starts: a name, maybe with template arguments."""
    i = end
    if text[i - 1] == ">":
        depth = 0
        while True:
            i -= 1
            if text[i] == ">":
                depth += 1
            elif text[i] == "<":
                depth -= 1
                if depth == 0:
                    break
    while i > 0 and (text[i - 1].isalnum() or text[i - 1] in "_:"):
        i -= 1
    return i


def rewrite(text):
    """A .cu source as host C++: each `kernel<<<grid, block, shared, stream>>>(args)` becomes a call of
    gan_kernels_emulation::launch, dynamic shared memory a pointer to the emulated block's, and each
    static `__shared__` variable a static that the block's first thread to declare it fills with
    garbage."""
    out = []
    pos = 0
    while (launch := text.find("<<<", pos)) >= 0:
        start = _kernel_start(text, launch)
        config_end = text.index(">>>", launch)
        args_start = config_end + 3
        if text[args_start] != "(":
            raise ValueError(f"a launch without arguments at offset {launch}")
        args_end = _balanced_end(text, args_start, "(", ")")
        kernel = text[start:launch]
        config = text[launch + 3 : config_end]
        args = text[args_start + 1 : args_end - 1]
        out.append(text[pos:start])
        out.append(f"::gan_kernels_emulation::launch({config}, {kernel}{', ' + args if args.strip() else ''})")
        pos = args_end
    out.append(text[pos:])
    text = "".join(out)

    def dynamic(match):
        type_, name = match.group(2), match.group(3)
        return f"{type_}* {name} = static_cast<{type_}*>(::gan_kernels_emulation::dynamic_shared());"

    text = re.sub(r"extern __shared__ (__align__\(\d+\) )?([\w: ]+?) (\w+)\[\];", dynamic, text)

    def static(match):
        align, type_, name, extents = match.group(1) or "", match.group(2), match.group(3), match.group(4)
        return (
            f"static {align}{type_} {name}{extents}; ::gan_kernels_emulation::static_shared(&{name}, sizeof({name}));"
        )

    return re.sub(r"__shared__ (__align__\(\d+\) )?([\w: ]+?) (\w+)((?:\[[^\]]+\])*);", static, text)


def _write_if_changed(path, text):
    if not os.path.exists(path) or open(path).read() != text:
        with open(path, "w") as f:
            f.write(text)


def kernel_sources():
    """The rewritten CUDA kernels and the emulation runtime: the code the sanitizers instrument."""
    generated = os.path.join(OUT, "src")
    os.makedirs(generated, exist_ok=True)
    kernels = []
    for cu in sorted(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu"))):
        path = os.path.join(generated, os.path.basename(cu)[: -len(".cu")] + "_kernels.cpp")
        _write_if_changed(path, f'#line 1 "{cu}"\n' + rewrite(open(cu).read()))
        kernels.append(path)
    return [*kernels, os.path.join(HERE, "runtime.cpp")]


def glue_sources():
    """The module and the ops' glue as built for CUDA, and the CPU output memory they allocate from."""
    csrc = os.path.join(ROOT, "csrc")
    return [
        os.path.join(csrc, "module.cpp"),
        *sorted(glob.glob(os.path.join(csrc, "ops", "*.cpp"))),
        os.path.join(csrc, "cpu", "output_memory.cpp"),
        os.path.join(csrc, "cpu", "capability.cpp"),
    ]


def _contraction_flags():
    """nvcc fuses multiplies and adds into FMAs by default (--fmad=true), which rounds once where the
    separate operations round twice: where the host has FMA the kernels are compiled to fuse too, so
    that the tests' tolerances meet rounding of that kind. GCC's choice of which products to fuse is
    not nvcc's, so the results still differ from a GPU's by rounding."""
    with open("/proc/cpuinfo") as cpuinfo:
        host_has_fma = any(line.startswith("flags") and " fma " in f"{line.rstrip()} " for line in cpuinfo)
    return ["-mfma", "-ffp-contract=fast"] if host_has_fma else ["-ffp-contract=off"]


@contextlib.contextmanager
def _compilers_without_preload():
    """Runs the compilers this process starts without LD_PRELOAD: under the sanitizer's runtime
    (preloaded into python for the ASan build) they took twice as long."""
    preload = os.environ.pop("LD_PRELOAD", None)
    try:
        yield
    finally:
        if preload is not None:
            os.environ["LD_PRELOAD"] = preload


def load(address_sanitizer=False, verbose=False):
    """Builds (when out of date) and imports the emulation extension as gan_kernels._C. With
    address_sanitizer, the build under AddressSanitizer (build/cuda-emulation-asan), for a python
    started with the sanitizer's runtime preloaded (README.md).

    Two libraries: the kernels and the runtime, instrumented, and the torch glue, which links to them
    and is not: the sanitizers check the kernels' accesses (the preloaded runtime gives every tensor's
    allocation its redzones whoever allocates it), and instrumenting the glue's torch headers took
    three quarters of the build."""
    from torch.utils.cpp_extension import load as load_extension

    if not os.path.exists(os.path.join(ROOT, "build", "generated", "build_info.h")):
        raise SystemExit("build/generated is missing: run `make build` first")
    # Alignment too: a 16-byte access at an address that is not a multiple of 16 faults on a GPU.
    sanitize = (
        ["-fsanitize=address,alignment", "-fno-sanitize-recover=alignment", "-fno-omit-frame-pointer"]
        if address_sanitizer
        else []
    )
    out = OUT + ("-asan" if address_sanitizer else "")
    kernels_out = os.path.join(out, "kernels")
    os.makedirs(kernels_out, exist_ok=True)
    defines = ["-DWITH_CUDA", "-DGAN_KERNELS_CUDA_EMULATION", "-Wno-unknown-pragmas"]
    include_paths = [
        os.path.join(HERE, "include"),
        os.path.join(ROOT, "csrc"),
        os.path.join(ROOT, "build", "generated"),
    ]
    with _compilers_without_preload():
        load_extension(
            name=KERNELS_LIBRARY,
            sources=kernel_sources(),
            extra_cflags=["-O2", *defines, *_contraction_flags(), *sanitize],
            extra_ldflags=sanitize,
            extra_include_paths=include_paths,
            build_directory=kernels_out,
            is_python_module=False,
            verbose=verbose,
        )
        # -O1: the glue's speed hardly shows in the tests, its compile time does.
        module = load_extension(
            name="_C",
            sources=glue_sources(),
            extra_cflags=["-O1", *defines],
            extra_ldflags=[f"-L{kernels_out}", f"-l:{KERNELS_LIBRARY}.so", f"-Wl,-rpath,{kernels_out}"],
            extra_include_paths=include_paths,
            build_directory=out,
            verbose=verbose,
        )
    sys.modules["gan_kernels._C"] = module
    return module


if __name__ == "__main__":
    print(f"CUDA emulation build: {load(os.environ.get('GAN_KERNELS_CUDA_EMULATION') == 'asan').__file__}")
