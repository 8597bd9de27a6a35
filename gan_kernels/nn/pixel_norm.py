import torch

from .. import _checks
from ..ops.pixel_norm import pixel_norm


class PixelNorm(torch.nn.Module):
    """ProGAN's PixelNorm / StyleGAN's ``normalize_2nd_moment`` as a layer:
    ``x * rsqrt(mean(x^2, dim) + eps)``, eps inside the rsqrt. No parameters or buffers."""

    def __init__(self, dim=1, eps=1e-8):
        super().__init__()
        self.dim = _checks.integer(dim, "dim")
        self.eps = _checks.nonnegative(eps, "eps")

    def forward(self, x):
        return pixel_norm(x, self.dim, self.eps)

    def extra_repr(self):
        return f"dim={self.dim}, eps={self.eps}"
