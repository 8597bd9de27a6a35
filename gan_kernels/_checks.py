"""Argument checks shared by the ops; messages match the C++ checks in csrc/ops/common.h.

Each argument is checked once per path: on the compiled path the ops' C++ contracts check the values,
and the Python wrappers only convert the forms of numbers the schema cannot take (``tensor``,
``integer``, ``int64``, ``real``); these checks serve the reference and the fake kernels.

Numbers are accepted in every form PyTorch itself accepts for a scalar argument: Python and numpy
numbers and 0-d tensors. Under ``torch.compile(dynamic=True)`` scalars may arrive as symbolic
``SymFloat``/``SymInt``; their values cannot be inspected while tracing, so the value checks are
skipped there (the compiled op checks its arguments again when it runs).
"""

import math
import numbers
import operator

import torch

from . import _dtypes

# The dtypes the kernels take, from the table the kernels are generated from.
FLOAT_DTYPES = tuple(getattr(torch, d.name) for d in _dtypes.DTYPES)
_FLOAT_DTYPE_NAMES = " or ".join(
    [", ".join(str(d).removeprefix("torch.") for d in FLOAT_DTYPES[:-1]), str(FLOAT_DTYPES[-1]).removeprefix("torch.")]
)
INT64_MAX = 2**63 - 1


def tensor(t, arg):
    """``t`` itself: a tensor, which the dispatcher needs to pick a kernel."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{arg} must be a torch.Tensor, got {type(t).__name__}")
    return t


def function(value, arg):
    """``value`` itself: something callable."""
    if not callable(value):
        raise TypeError(f"{arg} must be callable, got {type(value).__name__}")
    return value


def module(value, arg):
    """``value`` itself: a ``torch.nn.Module``."""
    if not isinstance(value, torch.nn.Module):
        raise TypeError(f"{arg} must be a torch.nn.Module, got {type(value).__name__}")
    return value


def generator(value, arg="generator"):
    """``value`` itself: a ``torch.Generator`` or None."""
    if value is not None and not isinstance(value, torch.Generator):
        raise TypeError(f"{arg} must be a torch.Generator or None, got {type(value).__name__}")
    return value


def grad_scaler(value, arg="scaler"):
    """``value`` itself: a ``torch.amp.GradScaler``, or anything with the methods of one that are used
    here (``scale``, ``get_scale``, ``is_enabled``)."""
    if not all(callable(getattr(value, method, None)) for method in ("scale", "get_scale", "is_enabled")):
        raise TypeError(f"{arg} must be a torch.amp.GradScaler, got {type(value).__name__}")
    return value


def check_floating(t, arg):
    tensor(t, arg)
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{arg} must be {_FLOAT_DTYPE_NAMES}, got {t.dtype}")


def has_samples(t, arg):
    """``t`` [N, ...] with N >= 1, for a mean over the batch: over no samples it is NaN, which a loss
    would carry into every weight (or a running statistic) without a word."""
    if t.shape[0] == 0:
        raise ValueError(f"{arg} has no samples (shape {list(t.shape)}): the batch mean is undefined")


def grad_enabled(what):
    """Autograd recording, which ``what`` (a penalty: a gradient taken with ``create_graph=True``)
    needs. Under ``torch.no_grad()`` or ``torch.inference_mode()`` the outputs carry no graph, and the
    error that followed blamed the arguments ("outputs does not depend on inputs")."""
    if not torch.is_grad_enabled():
        mode = "torch.inference_mode()" if torch.is_inference_mode_enabled() else "torch.no_grad()"
        raise RuntimeError(
            f"{what} takes a gradient of D's (or G's) outputs, which needs autograd, but it was called "
            f"under {mode}: call it (and the forward it differentiates) with grad mode on"
        )


def process_group_rank(group, arg="group"):
    """This process's rank in ``group`` (None: all ranks) of an initialised ``torch.distributed``.
    A process outside ``group`` is an error: torch's collectives return there without doing anything
    (with a warning), so a result computed from them (a mean divided by ``get_world_size``, which is
    -1 there) would be silently wrong."""
    distributed = torch.distributed
    if not (distributed.is_available() and distributed.is_initialized()):
        raise RuntimeError(
            "torch.distributed is not initialized: call torch.distributed.init_process_group() on every rank first"
        )
    # What new_group returns on a process outside the group (its ranks are not known there).
    outside = type(group) is int and group == distributed.GroupMember.NON_GROUP_MEMBER
    if not (group is None or outside or isinstance(group, distributed.ProcessGroup)):
        raise TypeError(
            f"{arg} must be a torch.distributed process group (from torch.distributed.new_group) or None, "
            f"got {type(group).__name__} {group!r}"
        )
    rank = distributed.get_rank(group)
    if rank < 0:
        ranks = "" if outside else f"; its global ranks are {distributed.get_process_group_ranks(group)}"
        raise ValueError(
            f"{arg} does not include this process (global rank {distributed.get_rank()}){ranks}: "
            f"call this only on the ranks of {arg}"
        )
    return rank


def same_device(t, ref, arg, ref_arg):
    """``t`` on ``ref``'s device (common.h's check_same_device, same message). The fake kernels need
    it too: one meta argument beside real ones sends the whole call to them, and they would return
    uninitialised tensors on the real device."""
    if t.device != ref.device:
        raise ValueError(f"{arg} is on {t.device} but {ref_arg} is on {ref.device}")


def same_dtype(t, ref, arg, ref_arg):
    """``t`` in ``ref``'s dtype (common.h's check_same_dtype, same message)."""
    if t.dtype != ref.dtype:
        raise TypeError(f"{arg} has dtype {t.dtype} but {ref_arg} has dtype {ref.dtype}")


def same_shape(t, shape, arg, what):
    """``t`` of ``shape``, that of ``what`` (common.h's check_same and its kind, same message)."""
    if list(t.shape) != list(shape):
        raise ValueError(f"{arg} has shape {list(t.shape)} but {what} has shape {list(shape)}")


def same(t, ref, arg, ref_arg, shape=None, what=None):
    """``t`` like ``ref``: its device, dtype and shape (common.h's check_same, same messages); with
    ``shape``, that shape instead, ``what``'s (an op's output, say)."""
    same_device(t, ref, arg, ref_arg)
    same_dtype(t, ref, arg, ref_arg)
    same_shape(t, ref.shape if shape is None else shape, arg, ref_arg if what is None else what)


def symbolic(value):
    """A value only known when the traced graph runs (dynamo may also hand it over as a float)."""
    return isinstance(value, (torch.SymFloat, torch.SymInt)) or torch.compiler.is_compiling()


def integer(value, arg):
    """``value`` as an int: Python and numpy integers and 0-d integer tensors; not bools or floats."""
    if type(value) is int:  # the common case first (bool is a subclass, not int itself)
        return value
    if isinstance(value, (torch.SymFloat, torch.SymInt)):
        return value
    if isinstance(value, bool) or (isinstance(value, torch.Tensor) and value.dtype == torch.bool):
        raise TypeError(f"{arg} must be an int, got bool {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{arg} must be an int, got {type(value).__name__} {value!r}") from None


def int64(value, arg):
    """``value`` as an int the ops' int64 arguments can carry."""
    value = integer(value, arg)
    if type(value) is int and value > INT64_MAX:  # else symbolic, its value unknown while tracing
        raise ValueError(f"{arg}={value} is too large: at most 2**63 - 1 (a 64-bit integer)")
    return value


def count(value, arg, minimum=1):
    """An int >= ``minimum`` that fits the ops' int64 arguments."""
    value = int64(value, arg)
    if not symbolic(value) and value < minimum:
        raise ValueError(f"{arg} must be >= {minimum}, got {value}")
    return value


def int_pair(value, arg, minimum):
    """An int or a pair of ints (a tuple or list), each >= ``minimum``, as conv2d's ``stride`` and
    ``padding``: an int as an int, a pair as a tuple of ints."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{arg} must be an int or a pair of ints, got {len(value)} values: {value!r}")
        return tuple(count(v, f"{arg}[{i}]", minimum) for i, v in enumerate(value))
    return count(value, arg, minimum)


def real(value, arg):
    """``value`` as a float: Python and numpy real numbers and 0-d real tensors. A 0-d tensor that
    requires grad is an error while grad mode is on: the value is a constant here, and taking it
    from the tensor would silently drop the gradient the caller asked for."""
    if type(value) is float:  # the common case first: every call of an op passes through here
        return value
    if type(value) is int:  # a layer's default gain=1: spared the abstract numbers.Real test below
        return value if torch.compiler.is_compiling() else float(value)
    if isinstance(value, (torch.SymFloat, torch.SymInt)):
        return value
    if isinstance(value, torch.Tensor):
        if value.dim() != 0 or value.is_complex() or value.dtype == torch.bool:
            raise TypeError(
                f"{arg} must be a real number or a 0-d real tensor, got a tensor of shape "
                f"{list(value.shape)} and dtype {value.dtype}"
            )
        if value.requires_grad and torch.is_grad_enabled():
            # .item() would silently cut the graph: no gradient would ever reach the tensor.
            raise TypeError(
                f"{arg} is a tensor that requires grad, but it is taken as a constant and gets no "
                f"gradient: pass {arg}.detach() (or a number), or compute under torch.no_grad()"
            )
        # A float as from every other form: item() of an integer tensor is an int.
        value = value.item()
        return value if symbolic(value) else float(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{arg} must be a real number, got {type(value).__name__} {value!r}")
    return value if symbolic(value) else float(value)


def finite(value, arg):
    value = real(value, arg)
    if not symbolic(value) and not math.isfinite(value):
        raise ValueError(f"{arg} must be a finite number, got {value}")
    return value


def nonnegative(value, arg):
    """A finite number >= 0, as a float."""
    value = real(value, arg)
    if not symbolic(value) and not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{arg} must be a finite number >= 0, got {value}")
    return value


def positive(value, arg):
    """A finite number > 0, as a float."""
    value = real(value, arg)
    if not symbolic(value) and not (math.isfinite(value) and value > 0):
        raise ValueError(f"{arg} must be a finite number > 0, got {value}")
    return value


def interval(value, arg, low, high, *, low_open=False, high_open=False):
    """A number between ``low`` and ``high`` (each end included unless ``low_open``/``high_open``), as
    a float. NaN is outside every interval."""
    value = real(value, arg)
    if symbolic(value):
        return value
    above = value > low if low_open else value >= low
    below = value < high if high_open else value <= high
    if not (above and below):
        bounds = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise ValueError(f"{arg} must be in {bounds}, got {value}")
    return value


def wrap_dim(dim, t, arg):
    """``dim`` of ``t`` in [0, ndim) as torch wraps it (a 0-d tensor takes dim 0 or -1, as torch's
    reductions do); an IndexError naming ``arg`` otherwise."""
    dim = integer(dim, arg)
    ndim = t.dim()
    size = max(ndim, 1)
    if not -size <= dim < size:
        raise IndexError(
            f"{arg}={dim} is out of range for a tensor with {ndim} dimensions (expected {-size} <= {arg} < {size})"
        )
    return dim % size
