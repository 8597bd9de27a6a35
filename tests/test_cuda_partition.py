"""The CUDA kernels' partitions checked on the CPU, no GPU or nvcc needed: tests/cpp/cuda_partition_check.cpp
walks the block, thread and loop structure of pixel_norm_tiles, of minibatch stddev's group_positions and
of the spectral norm's power iteration (W v, W^T u, the layers' 1-D grid) and normalisation (W / sigma,
<G, W>, the backward's formula) over awkward shapes, through the torch-free headers the kernels use
(csrc/cuda/pixel_norm_tiles.h, csrc/cuda/minibatch_std_tiles.h, csrc/common/spectral_norm_partition.h),
and fails unless every element is accessed exactly once, aligned to its access width, every pixel-norm
sum meets each channel row once, each W^T u column adds its rows in an order set by the row count alone,
and the normalisation backward's walk gives each access the row and column that divisions would."""

import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs the system g++")
def test_every_element_covered_exactly_once(tmp_path):
    generated = tmp_path / "generated"  # the dtype table the common headers include
    subprocess.run([sys.executable, os.path.join(ROOT, "gan_kernels", "_codegen.py"), str(generated)], check=True)
    binary = tmp_path / "cuda_partition_check"
    source = os.path.join(ROOT, "tests", "cpp", "cuda_partition_check.cpp")
    flags = ["-std=c++17", "-O1", "-Wall", "-Werror", f"-I{os.path.join(ROOT, 'csrc')}", f"-I{generated}"]
    subprocess.run(["g++", *flags, source, "-o", str(binary)], check=True)
    run = subprocess.run([str(binary)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.strip().endswith(", 0 failures") and not run.stdout.startswith("0 cases"), run.stdout
