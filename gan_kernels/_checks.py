"""Argument checks shared by the ops; messages match the C++ checks in csrc/ops/common.h."""
import math
import numbers

import torch

FLOAT_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)


def check_floating(t, arg):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{arg} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{arg} must be float64, float32, float16 or bfloat16, got {t.dtype}")


def wrap_dim(dim, t, arg):
    ndim = t.dim()
    if not (ndim > 0 and -ndim <= dim < ndim):
        raise IndexError(
            f"{arg}={dim} is out of range for a tensor with {ndim} dimensions (expected {-ndim} <= {arg} < {ndim})"
        )
    return dim % ndim


def check_nonnegative(value, arg):
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
        raise ValueError(f"{arg} must be a finite number >= 0, got {value}")


def as_float(value, arg):
    """``value`` as a Python float, accepting what PyTorch accepts for a float argument: Python and
    numpy numbers and one-element tensors (not bool, which is almost always a mistake here)."""
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.dtype.is_complex:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{arg} must be a real number, got {type(value).__name__} {value!r}")
    return float(value)
