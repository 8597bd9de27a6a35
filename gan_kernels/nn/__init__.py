"""Drop-in layers for existing PyTorch GANs."""

from .equalized import EqualizedConv2d, EqualizedLinear
from .minibatch_discrimination import MinibatchDiscrimination
from .minibatch_std import MinibatchStd
from .pixel_norm import PixelNorm
from .spectral_norm import (
    SpectralNorm,
    SpectralNormGroup,
    batch_spectral_norm,
    spectral_norm,
    spectral_norm_layers,
    spectral_sigmas,
)

__all__ = [
    "EqualizedConv2d",
    "EqualizedLinear",
    "MinibatchDiscrimination",
    "MinibatchStd",
    "PixelNorm",
    "SpectralNorm",
    "SpectralNormGroup",
    "batch_spectral_norm",
    "spectral_norm",
    "spectral_norm_layers",
    "spectral_sigmas",
]
