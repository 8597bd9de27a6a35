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


def per_sample_penalty(g, center=1.0):
    """Gradient penalty per sample of ``g`` [N, ...]: ``(||g_i||_2 - center)^2`` over all non-batch
    dims, and exactly ``sum(g_i^2)`` (no sqrt) for ``center == 0``.

    The norm is taken only where ``sum(g_i^2) > 0``; a zero row gets the constant ``center^2``, so
    every derivative there is 0 instead of the NaN that sqrt (or ``torch.linalg.vector_norm``'s double
    backward) gives at 0.
    """
    compute = _compute_dtype(g)
    rows = g.flatten(1) if g.dim() > 1 else g.unsqueeze(1)
    sum_squares = rows.to(compute).square().sum(1)
    if center == 0:
        return sum_squares.to(g.dtype)
    nonzero = sum_squares > 0
    norm = sum_squares.where(nonzero, 1.0).sqrt()
    return torch.where(nonzero, (norm - center).square(), float(center) ** 2).to(g.dtype)


def gradient_penalty(outputs, inputs, center=1.0):
    """Per-sample penalty of ``g = d(sum(outputs))/d(inputs)``, differentiable (create_graph)."""
    (g,) = torch.autograd.grad(outputs.sum(), inputs, create_graph=True)
    return per_sample_penalty(g, center)
