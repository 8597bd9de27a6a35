"""gan_kernels: fast, exact, twice-differentiable GAN stabilisation ops for PyTorch."""
import torch  # noqa: F401  (must be loaded before the compiled extension)

from . import nn, reference
from ._backend import Backend, FallbackWarning, backend
from .ops import bias_act, pixel_norm

__version__ = "0.1.0"

__all__ = ["Backend", "FallbackWarning", "backend", "bias_act", "nn", "pixel_norm", "reference"]
