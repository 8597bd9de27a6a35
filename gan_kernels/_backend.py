"""Which implementation runs an op: the compiled ``gan_kernels._C`` or the pure-PyTorch reference.

``GAN_KERNELS_IMPL=reference`` (read at import) forces the reference everywhere; ``auto`` (the
default) uses the compiled ops wherever they have a kernel for the tensor's device.
``GAN_KERNELS_CPU_CACHE_MB`` (read at import) is the most memory, in MiB, that the compiled CPU ops keep
of their freed large outputs for reuse (csrc/cpu/output_memory.h; default 1024, 0 keeps none).
``GAN_KERNELS_HUGE_PAGES=0`` (read at import) stops them from asking for transparent huge pages on
those outputs; ``1``, the default, asks.
"""

import dataclasses
import importlib.util
import os
import sys
import warnings

import torch  # (loaded before the compiled extension, which links against it)
import torch.autograd.forward_ad as forward_ad

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

HUGE_PAGES_ENV = "GAN_KERNELS_HUGE_PAGES"


def _requested_huge_pages():
    value = os.environ.get(HUGE_PAGES_ENV, "1").strip() or "1"
    if value not in ("0", "1"):
        raise ValueError(f"{HUGE_PAGES_ENV}={value!r} is not 0 or 1")
    return value == "1"


HUGE_PAGES = _requested_huge_pages()

CPU_CACHE_ENV = "GAN_KERNELS_CPU_CACHE_MB"
DEFAULT_CPU_CACHE_MB = 1024


def _requested_cpu_cache_bytes():
    value = os.environ.get(CPU_CACHE_ENV, "").strip() or str(DEFAULT_CPU_CACHE_MB)
    if not value.isdigit():
        raise ValueError(f"{CPU_CACHE_ENV}={value!r} is not a whole number of MiB (0 turns the cache off)")
    return int(value) << 20


CPU_CACHE_BYTES = _requested_cpu_cache_bytes()


def _load_extension():
    """(the compiled module or None, why it is None)"""
    try:
        if importlib.util.find_spec(f"{__package__}._C") is None:
            return None, "it is not built (no gan_kernels/_C*.so next to the package)"
        from . import _C
    except ImportError as error:  # built against another torch, or a missing library
        if "undefined symbol" in str(error):
            return None, f"{error}: it was most likely built against another torch than this {torch.__version__}"
        return None, f"{type(error).__name__}: {error}"
    other_torch = _other_torch(_C.torch_version)
    return (None, other_torch) if other_torch else (_C, None)


def _other_torch(built_with):
    """Why an extension built against torch ``built_with`` is not used with this torch, or None. C++
    extensions have no ABI promise across torch versions: one that still loads may crash or compute
    wrongly, so it is refused rather than run."""
    if built_with == torch.__version__:
        return None
    return f"it was built against torch {built_with}, and this is torch {torch.__version__}"


def _user_stacklevel():
    """The ``stacklevel`` that makes a warning point at the first caller outside gan_kernels (the
    user's ``import``), counted as warnings.warn counts: importlib's own frames do not count."""
    level, frame = 1, sys._getframe(1)
    while frame is not None and frame.f_globals.get("__name__", "").partition(".")[0] in (__package__, "importlib"):
        if not frame.f_code.co_filename.startswith("<frozen importlib"):
            level += 1
        frame = frame.f_back
    return level


_C, C_ERROR = _load_extension()
if _C is not None:
    _C.set_huge_page_outputs(HUGE_PAGES)
    _C.set_output_cache_limit(CPU_CACHE_BYTES)

if _C is None and IMPL != "reference":
    warnings.warn(
        f"gan_kernels: the compiled extension gan_kernels._C could not be loaded ({C_ERROR}); every op "
        "runs its pure-PyTorch reference (exact, slower). Build (or rebuild) it with `make build` or "
        "`pip install --no-build-isolation .`; set GAN_KERNELS_IMPL=reference to silence this.",
        FallbackWarning,
        stacklevel=_user_stacklevel(),
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


@dataclasses.dataclass(frozen=True)
class CpuCacheInfo:
    """The compiled CPU ops' cache of large output blocks (README, "Ops"): ``in_use_bytes`` held by
    live tensors, ``cached_bytes`` freed and kept for reuse, ``limit_bytes`` the most it keeps freed."""

    in_use_bytes: int
    cached_bytes: int
    limit_bytes: int


def cpu_cache_info():
    """What the cache of our large CPU outputs holds now (zeros without the compiled extension)."""
    if _C is None:
        return CpuCacheInfo(0, 0, 0)
    return CpuCacheInfo(*_C.output_cache_stats())


def empty_cpu_cache():
    """Give the freed output blocks our CPU ops keep for reuse back to the OS, as
    ``torch.cuda.empty_cache()`` does for PyTorch's CUDA cache; blocks live tensors hold stay."""
    if _C is not None:
        _C.empty_output_cache()


def compiled_available():
    """Whether the compiled ops are registered and wanted (their Python registrations depend on it)."""
    return _C is not None and IMPL != "reference"


_warned_devices = set()
# torch.device -> device.type, which builds its string anew on every read: that cost as much as the
# rest of use_compiled.
_device_types = {}
_peek_interpreter_stack = torch._C._functorch.peek_interpreter_stack


def _warn_once(device_type, message):
    if device_type not in _warned_devices:
        _warned_devices.add(device_type)
        warnings.warn(message, FallbackWarning, stacklevel=_user_stacklevel())


def forward_ad_active(*tensors):
    """Whether forward-mode AD (``torch.func.jvp``, ``jacfwd``, ``hessian``, or
    ``torch.autograd.forward_ad``) tracks any of ``tensors``. The compiled ops define reverse mode
    only (``register_autograd``), and PyTorch would give them a silent zero tangent, so such calls
    run the reference, which is plain aten ops and supports every mode."""
    tensors = [t for t in tensors if isinstance(t, torch.Tensor)]
    if forward_ad._current_level >= 0 and any(forward_ad.unpack_dual(t).tangent is not None for t in tensors):
        return True
    if any(torch._C._functorch.is_functorch_wrapped_tensor(t) for t in tensors):
        from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters

        jvp = torch._C._functorch.TransformType.Jvp
        return any(interpreter.key() == jvp for interpreter in retrieve_all_functorch_interpreters())
    return False


def functorch_grad_active():
    """Whether a functorch reverse-mode transform (``torch.func.grad``, ``vjp``, ``jacrev``) is active.
    The compiled ops' autograd is C++ (``torch::autograd::Function``), which such a transform refuses
    ("cannot use C++ torch::autograd::Function with functorch transforms"), even for an argument it
    does not track, so such calls run the reference."""
    from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters

    grad = torch._C._functorch.TransformType.Grad
    return any(interpreter.key() == grad for interpreter in retrieve_all_functorch_interpreters())


def use_compiled(device, *tensors):
    """Whether ops on tensors of ``device`` run the compiled kernels (else the reference); pass the
    op's tensor arguments as ``tensors`` so that forward-mode AD and functorch's reverse-mode
    transforms are routed to the reference."""
    if not compiled_available():
        return False
    if (
        tensors
        and not torch.compiler.is_compiling()
        # Neither transform runs without a dual level or a functorch interpreter: the common case,
        # decided here without the calls (every op call passes through here).
        and (forward_ad._current_level >= 0 or _peek_interpreter_stack() is not None)
        and (forward_ad_active(*tensors) or functorch_grad_active())
    ):
        return False
    device_type = _device_types.get(device)
    if device_type is None:
        device_type = _device_types.setdefault(device, device.type)
    if device_type in ("cpu", "meta"):
        return True
    if device_type == "cuda":
        if _C.cuda_compiled:
            return True
        _warn_once(
            "cuda",
            "gan_kernels._C was built without CUDA kernels, so ops on CUDA tensors run the pure-PyTorch "
            "reference. Rebuild with a CUDA build of torch and nvcc on PATH (or FORCE_CUDA=1).",
        )
        return False
    _warn_once(
        device_type, f"gan_kernels has no kernels for {device_type} tensors; they use the pure-PyTorch reference."
    )
    return False
