"""Which implementation runs an op: the compiled ``gan_kernels._C`` or the pure-PyTorch reference.

``GAN_KERNELS_IMPL=reference`` (read at import) forces the reference everywhere; ``auto`` (the
default) uses the compiled ops wherever they have a kernel for the tensor's device.
"""
import dataclasses
import os
import warnings

import torch  # noqa: F401  (loaded before the compiled extension, which links against it)

IMPL_ENV = "GAN_KERNELS_IMPL"
IMPL_CHOICES = ("auto", "reference")


class FallbackWarning(UserWarning):
    """An op runs its pure-PyTorch reference because no compiled kernel fits."""


def _requested_impl():
    value = os.environ.get(IMPL_ENV, "auto").strip().lower() or "auto"
    if value not in IMPL_CHOICES:
        raise ValueError(f"{IMPL_ENV}={value!r} is not one of {', '.join(IMPL_CHOICES)}")
    return value


IMPL = _requested_impl()

try:
    from . import _C
except ImportError as error:  # not built, or built against another torch
    _C = None
    C_ERROR = f"{type(error).__name__}: {error}"
else:
    C_ERROR = None

if _C is None and IMPL != "reference":
    warnings.warn(
        f"gan_kernels: the compiled extension gan_kernels._C could not be loaded ({C_ERROR}); every op "
        "runs its pure-PyTorch reference (exact, slower). Build it with `make build` or "
        "`pip install --no-build-isolation .`; set GAN_KERNELS_IMPL=reference to silence this.",
        FallbackWarning,
        stacklevel=3,
    )


@dataclasses.dataclass(frozen=True)
class Backend:
    """What runs the ops: ``impl`` is "compiled" or "reference"; ``cuda`` says whether CUDA
    kernels are compiled in; ``reason`` says why, in words."""

    impl: str
    cuda: bool
    reason: str

    def __str__(self):
        return f"{self.impl} ({self.reason})"


def backend():
    """Report which implementation the ops use in this process, and why."""
    if IMPL == "reference":
        return Backend("reference", False, f"forced by {IMPL_ENV}=reference")
    if _C is None:
        return Backend("reference", False, f"gan_kernels._C could not be loaded: {C_ERROR}")
    if _C.cuda_compiled:
        archs = ", ".join(_C.cuda_archs) or "default archs"
        return Backend("compiled", True, f"CPU and CUDA kernels ({archs})")
    return Backend("compiled", False, "CPU kernels; built without CUDA, so CUDA tensors use the reference")


def compiled_available():
    """Whether the compiled ops are registered and wanted (their Python registrations depend on it)."""
    return _C is not None and IMPL != "reference"


_warned_devices = set()


def _warn_once(device_type, message):
    if device_type not in _warned_devices:
        _warned_devices.add(device_type)
        warnings.warn(message, FallbackWarning, stacklevel=4)


def use_compiled(device):
    """Whether ops on tensors of ``device`` run the compiled kernels (else the reference)."""
    if not compiled_available():
        return False
    if device.type in ("cpu", "meta"):
        return True
    if device.type == "cuda":
        if _C.cuda_compiled:
            return True
        _warn_once(
            "cuda",
            "gan_kernels._C was built without CUDA kernels, so ops on CUDA tensors run the pure-PyTorch "
            "reference. Rebuild with a CUDA build of torch and nvcc on PATH (or FORCE_CUDA=1).",
        )
        return False
    _warn_once(device.type, f"gan_kernels has no kernels for {device.type} tensors; they use the pure-PyTorch reference.")
    return False
