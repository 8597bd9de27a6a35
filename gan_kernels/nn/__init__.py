"""Drop-in layers for existing PyTorch GANs."""
from .pixel_norm import PixelNorm

__all__ = ["PixelNorm"]
