"""gan_kernels: fast, exact, twice-differentiable GAN stabilisation ops for PyTorch."""

import torch  # noqa: F401  (must be loaded before the compiled extension)

from . import distributed, losses, monitor, nn, penalties, reference, stabilizers
from ._backend import Backend, CpuCacheInfo, FallbackWarning, backend, cpu_cache_info, empty_cpu_cache
from .ops import (
    bias_act,
    minibatch_discrimination,
    minibatch_std,
    per_sample_penalty,
    pixel_norm,
    spectral_norm_normalize,
    spectral_norm_power_iteration_,
)
from .monitor import StabilityMonitor, StabilityWarning
from .penalties import gradient_penalty

__version__ = "0.1.0"

__all__ = [
    "Backend",
    "CpuCacheInfo",
    "FallbackWarning",
    "StabilityMonitor",
    "StabilityWarning",
    "backend",
    "bias_act",
    "cpu_cache_info",
    "distributed",
    "empty_cpu_cache",
    "gradient_penalty",
    "losses",
    "monitor",
    "minibatch_discrimination",
    "minibatch_std",
    "nn",
    "penalties",
    "per_sample_penalty",
    "pixel_norm",
    "reference",
    "spectral_norm_normalize",
    "spectral_norm_power_iteration_",
    "stabilizers",
]
