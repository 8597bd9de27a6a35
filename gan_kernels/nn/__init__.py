"""Drop-in layers for existing PyTorch GANs."""
from .minibatch_std import MinibatchStd
from .pixel_norm import PixelNorm

__all__ = ["MinibatchStd", "PixelNorm"]
