"""Drop-in layers for existing PyTorch GANs."""
from .equalized import EqualizedConv2d, EqualizedLinear
from .pixel_norm import PixelNorm

__all__ = ["EqualizedConv2d", "EqualizedLinear", "PixelNorm"]
