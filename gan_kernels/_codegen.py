"""Writes the C++ headers generated from the Python tables (``_activations.py``, ``_dtypes.py``):
``python gan_kernels/_codegen.py OUT_DIR``, run by setup.py, CMakeLists.txt and scripts/sass_audit.py.

Loads the tables by path, without importing the package (and so torch), which the build may not
have yet.
"""

import os
import runpy
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
# header name -> table module
HEADERS = {"activation_table.h": "_activations.py", "dtype_table.h": "_dtypes.py"}


def write_headers(out_dir):
    """Writes each header only when its text changes, so that a rebuild recompiles nothing for it."""
    os.makedirs(out_dir, exist_ok=True)
    for header, table in HEADERS.items():
        text = runpy.run_path(os.path.join(HERE, table))["cpp_header"]()
        path = os.path.join(out_dir, header)
        if os.path.exists(path):
            with open(path) as f:
                if f.read() == text:
                    continue
        with open(path, "w") as f:
            f.write(text)


if __name__ == "__main__":
    write_headers(sys.argv[1])
