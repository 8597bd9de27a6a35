"""Drop-in layers for existing PyTorch GANs."""
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
    "MinibatchStd",
    "PixelNorm",
    "SpectralNorm",
    "SpectralNormGroup",
    "batch_spectral_norm",
    "spectral_norm",
    "spectral_norm_layers",
    "spectral_sigmas",
]
