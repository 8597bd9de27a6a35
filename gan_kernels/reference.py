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


def minibatch_std(x, group_size=4, num_channels=1):
    """StyleGAN2's ``MinibatchStdLayer``: append F = num_channels channels holding, for each group of
    G = min(group_size, N) samples (sample n is in group n % (N/G)), the mean over each feature's
    C/F channels and all pixels of the group's biased standard deviation sqrt(var + 1e-8)."""
    n, c, h, w = x.shape
    g = min(group_size, n)
    f = num_channels
    if x.numel() == 0:  # the reshapes below cannot infer -1 from no elements
        return torch.cat([x, x.new_zeros(n, f, h, w)], dim=1)
    y = x.to(_compute_dtype(x)).reshape(g, -1, f, c // f, h, w)
    y = y - y.mean(dim=0)
    y = y.square().mean(dim=0)
    y = (y + 1e-8).sqrt()
    y = y.mean(dim=[2, 3, 4])
    y = y.reshape(-1, f, 1, 1).repeat(g, 1, h, w)
    return torch.cat([x, y.to(x.dtype)], dim=1)
