"""Gradient penalties for discriminators (WGAN-GP, R1, R2, DRAGAN, zero-centred GP) on the fused,
twice-differentiable per-sample penalty op, plus lazy regularisation and StyleGAN2's path-length
regulariser for the generator."""

from .gradient import dragan, dragan_points, gradient_penalty, interpolates, r1, r2, wgan_gp, zero_centered_gp
from .lazy import LazyRegularizer, lazy_adam_hyperparameters
from .path_length import PathLengthRegularizer

__all__ = [
    "LazyRegularizer",
    "PathLengthRegularizer",
    "dragan",
    "dragan_points",
    "gradient_penalty",
    "interpolates",
    "lazy_adam_hyperparameters",
    "r1",
    "r2",
    "wgan_gp",
    "zero_centered_gp",
]
