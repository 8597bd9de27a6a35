"""What users build and install from: the sdist must build, and setup.py must refuse a CUDA build it
cannot do with an error that names the setting and its value, before compiling anything."""

import os
import re
import runpy
import subprocess
import sys
import tarfile

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def source_files(folder):
    return {
        os.path.relpath(os.path.join(path, name), ROOT)
        for path, _, names in os.walk(os.path.join(ROOT, folder))
        for name in names
        if "__pycache__" not in path
    }


def test_the_sdist_carries_every_file_the_build_reads(tmp_path):
    # setuptools alone would ship the .cpp sources setup.py lists, and none of the headers they include.
    subprocess.run(
        [sys.executable, "setup.py", "-q", "sdist", "--dist-dir", str(tmp_path)],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    (archive,) = tmp_path.glob("gan_kernels-*.tar.gz")
    with tarfile.open(archive) as tar:
        names = {name.partition("/")[2] for name in tar.getnames()}
    needed = {name for name in source_files("csrc") | source_files("gan_kernels") if not name.endswith(".so")}
    needed |= {"setup.py", "pyproject.toml", "MANIFEST.in", "CMakeLists.txt"}
    assert sorted(needed - names) == []


@pytest.fixture
def setup_py():
    """setup.py's functions, loaded without starting a build."""
    return runpy.run_path(os.path.join(ROOT, "setup.py"), run_name="setup_under_test")


def fake_nvcc(path, script):
    """A stand-in nvcc at ``path`` that runs the shell ``script``, whatever its arguments."""
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(0o755)
    return str(path)


def arch_listing(archs):
    """What ``nvcc --list-gpu-arch`` prints for ``archs`` ("75 80 ...")."""
    return "".join(f"echo compute_{a}\n" for a in archs.split())


@pytest.fixture
def cuda12_nvcc(tmp_path):
    """An nvcc that answers --list-gpu-arch as CUDA 12.8's does (from sm_50) and compiles nothing."""
    return fake_nvcc(tmp_path / "nvcc", arch_listing("50 52 53 60 61 62 70 72 75 80 86 87 89 90 100 101 120"))


@pytest.fixture
def cuda13_nvcc(tmp_path):
    """An nvcc that answers --list-gpu-arch as CUDA 13.0's does: nothing below sm_75."""
    return fake_nvcc(tmp_path / "nvcc13", arch_listing("75 80 86 87 88 89 90 100 110 103 120 121"))


def test_an_arch_nvcc_cannot_target_is_refused_naming_the_setting(setup_py, cuda13_nvcc, monkeypatch):
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "7.0+PTX;9.0")
    with pytest.raises(SystemExit, match=r"LIST='7.0\+PTX;9.0' asks for compute_70, sm_70, which .*nvcc13 cannot"):
        setup_py["cuda_arch_names"](cuda13_nvcc)


def test_archs_nvcc_can_target_are_built(setup_py, cuda12_nvcc, cuda13_nvcc, monkeypatch):
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "7.0;9.0a")
    assert setup_py["cuda_arch_names"](cuda12_nvcc) == ["sm_70", "sm_90a"]
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "Hopper")
    assert setup_py["cuda_arch_names"](cuda13_nvcc) == ["compute_90", "sm_90"]


def test_an_unknown_arch_is_refused_naming_the_setting(setup_py, cuda13_nvcc, monkeypatch):
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "9.1")
    with pytest.raises(SystemExit, match=r"TORCH_CUDA_ARCH_LIST='9.1': Unknown CUDA arch \(9.1\)"):
        setup_py["cuda_arch_names"](cuda13_nvcc)


@pytest.mark.skipif(torch.cuda.device_count() > 0, reason="a GPU is visible, so its arch is the default")
def test_without_arch_list_or_gpu_the_build_asks_for_the_arch_list(setup_py, cuda13_nvcc, monkeypatch):
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST", raising=False)
    with pytest.raises(SystemExit, match="no GPU is visible .*set TORCH_CUDA_ARCH_LIST"):
        setup_py["cuda_arch_names"](cuda13_nvcc)


def test_an_nvcc_that_does_not_run_is_named(setup_py, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "9.0")
    missing = str(tmp_path / "bin" / "nvcc")
    with pytest.raises(SystemExit, match=f"cannot run {missing} .*set CUDA_HOME"):
        setup_py["cuda_arch_names"](missing)


def test_an_nvcc_that_cannot_list_its_archs_leaves_the_check_to_nvcc(setup_py, tmp_path, monkeypatch):
    # An nvcc without --list-gpu-arch (or answering in another form) is no reason to stop a build
    # that may well work: the arch list goes to nvcc unchecked, as without this check.
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "9.0")
    for answer in ("echo 'nvcc fatal: Unknown option' >&2; exit 1\n", "echo sm_90 sm_100\n"):
        assert setup_py["cuda_arch_names"](fake_nvcc(tmp_path / "nvcc", answer)) == ["sm_90"]


def test_force_cuda_takes_0_or_1(setup_py, monkeypatch):
    monkeypatch.setenv("FORCE_CUDA", "yes")
    with pytest.raises(SystemExit, match="FORCE_CUDA='yes' is not 0 or 1"):
        setup_py["cuda_wanted"]()


@pytest.mark.skipif(torch.version.cuda is not None, reason="torch is a CUDA build: FORCE_CUDA=1 can build")
def test_force_cuda_with_a_cpu_torch_is_refused_before_compiling(setup_py, monkeypatch):
    # It used to fail in torch's arch helper (IndexError), or with TORCH_CUDA_ARCH_LIST set, at the
    # link, after every source had compiled: a CPU torch has no libc10_cuda.
    monkeypatch.setenv("FORCE_CUDA", "1")
    with pytest.raises(SystemExit, match=f"FORCE_CUDA=1, but torch {re.escape(torch.__version__)} is a CPU-only"):
        setup_py["cuda_wanted"]()
