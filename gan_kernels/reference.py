"""Pure-PyTorch formulas of every op: the spec, the fallback when no compiled kernel fits, and
the oracle the tests compare against. fp16/bf16 inputs are computed in float32 and returned in
their own dtype, as the kernels do."""
import torch

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _compute_dtype(x):
    return torch.float32 if x.dtype in _LOW_PRECISION else x.dtype


def pixel_norm(x, dim=1, eps=1e-8):
    """ProGAN's PixelNorm, StyleGAN's ``normalize_2nd_moment``: ``x * rsqrt(mean(x^2, dim) + eps)``."""
    xc = x.to(_compute_dtype(x))
    return (xc * (xc.square().mean(dim=dim, keepdim=True) + eps).rsqrt()).to(x.dtype)
