"""What users build and install from: the sdist must build."""

import os
import subprocess
import sys
import tarfile

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
