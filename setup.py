"""Build gan_kernels._C: CPU kernels always, CUDA kernels when torch is a CUDA build and nvcc
is found (or FORCE_CUDA=1)."""

import glob
import os
import runpy

import torch
from setuptools import find_packages, setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

VERSION = "0.1.0"
ROOT = os.path.dirname(os.path.abspath(__file__))
GENERATED = os.path.join(ROOT, "build", "generated")


def cuda_wanted():
    if os.environ.get("FORCE_CUDA", "0") == "1":
        return True
    return torch.version.cuda is not None and CUDA_HOME is not None


def cuda_arch_names():
    from torch.utils import cpp_extension

    flags = cpp_extension._get_cuda_arch_flags()
    return sorted({f.split("code=")[-1] for f in flags if "code=" in f})


def write_build_info(with_cuda):
    """The facts csrc/module.cpp reports, as a header: quoting them through -D flags breaks on ';'."""
    archs = ";".join(cuda_arch_names()) if with_cuda else ""
    os.makedirs(GENERATED, exist_ok=True)
    text = (
        "#pragma once\n"
        f'#define GAN_KERNELS_VERSION "{VERSION}"\n'
        f'#define GAN_KERNELS_TORCH_VERSION "{torch.__version__}"\n'
        f'#define GAN_KERNELS_CUDA_ARCHS "{archs}"\n'
    )
    path = os.path.join(GENERATED, "build_info.h")
    if not os.path.exists(path) or open(path).read() != text:
        with open(path, "w") as f:
            f.write(text)


def write_table_headers():
    """The activation and dtype tables (gan_kernels/_activations.py, _dtypes.py) as the kernels' headers."""
    runpy.run_path(os.path.join(ROOT, "gan_kernels", "_codegen.py"))["write_headers"](GENERATED)


def extension():
    with_cuda = cuda_wanted()
    write_build_info(with_cuda)
    write_table_headers()
    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/ops/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    # at::parallel_for is inline OpenMP: without -fopenmp our CPU kernels would run on one thread.
    # ATen's vector headers (cpu/bias_act_kernel.h) carry `#pragma unroll`s GCC does not know, and
    # pass 32-byte vectors by value, of which GCC notes an ABI change of GCC 4.6: nothing we export
    # takes a vector.
    cxx_flags = ["-O3", "-fopenmp", "-Wno-unknown-pragmas", "-Wno-psabi"]
    kwargs = dict(
        name="gan_kernels._C",
        include_dirs=[os.path.join(ROOT, "csrc"), GENERATED],
        extra_compile_args={"cxx": cxx_flags},
        extra_link_args=["-fopenmp"],
    )
    if not with_cuda:
        return CppExtension(sources=sources, **kwargs)
    kwargs["extra_compile_args"]["nvcc"] = ["-O3", "-lineinfo"]
    kwargs["define_macros"] = [("WITH_CUDA", None)]
    return CUDAExtension(sources=sources + sorted(glob.glob("csrc/cuda/*.cu")), **kwargs)


setup(
    name="gan_kernels",
    version=VERSION,
    description="Fast, exact, twice-differentiable GAN stabilisation ops for PyTorch",
    packages=find_packages(include=["gan_kernels", "gan_kernels.*"]),
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    python_requires=">=3.9",
    install_requires=["torch>=2.4"],
    extras_require={
        "test": ["pytest", "hypothesis", "numpy", "tensorboard"],
        "examples": ["matplotlib", "scikit-learn", "tqdm"],
    },
)
