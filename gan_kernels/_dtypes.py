"""The element types every kernel takes, one row each: the one table that the C++ kernels (through a
header generated from it at build time, see ``gan_kernels/_codegen.py``) and the Python checks read.
``_C.dtypes`` exports what the extension was built with, so a stale build is caught
(tests/test_backend.py).

Plain Python without torch, so that the build can run it before torch is importable.
"""

from typing import NamedTuple


class DType(NamedTuple):
    name: str  # as torch names it: getattr(torch, name)
    enumerator: str  # gan_kernels::DType
    scalar_type: str  # c10::ScalarType
    cpu_type: str  # element type of the CPU kernels
    cuda_type: str  # element type of the CUDA kernels


DTYPES = (
    DType("float64", "Float64", "Double", "double", "double"),
    DType("float32", "Float32", "Float", "float", "float"),
    DType("float16", "Float16", "Half", "c10::Half", "__half"),
    DType("bfloat16", "BFloat16", "BFloat16", "c10::BFloat16", "__nv_bfloat16"),
)


def cpp_header():
    """The table as an X-macro: each device's header expands only its own column."""
    rows = "".join(f"  X({d.enumerator}, {d.scalar_type}, {d.cpu_type}, {d.cuda_type}) \\\n" for d in DTYPES)
    return (
        "// Generated from gan_kernels/_dtypes.py; edit the table there.\n"
        "#pragma once\n\n"
        "// X(enumerator, c10::ScalarType enumerator, CPU element type, CUDA element type)\n"
        f"#define GAN_KERNELS_FOR_EACH_DTYPE(X) \\\n{rows}\n"
    )
