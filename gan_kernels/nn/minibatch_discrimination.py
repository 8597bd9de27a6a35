import math

import torch

from .. import _checks
from ..ops.minibatch_discrimination import minibatch_discrimination


class MinibatchDiscrimination(torch.nn.Module):
    """Minibatch discrimination (Salimans et al. 2016, "Improved Techniques for Training GANs", 3.2):
    ``x`` [N, A] -> ``cat([x, o], 1)`` [N, A + B], placed before a discriminator's last layer so that
    it sees how similar each sample is to the rest of its batch (a collapsed generator's batch is
    all alike).

    ``M = x (T * weight_gain)`` with the learned tensor ``T`` [A, B, C] (A = ``in_features``,
    B = ``num_kernels``, C = ``kernel_dim``) gives M [N, B, C], and
    ``o[i, b] = sum_{j != i} exp(-sum_c |M[i, b, c] - M[j, b, c]|)``
    (:func:`gan_kernels.minibatch_discrimination`). The paper's sum also counts j = i, which adds the
    constant 1. The statistics are over the batch the layer is called with: call D on real and
    generated batches separately (or split a concatenated batch), or each sample's features also
    measure its similarity to the other kind.

    Initialisation and learning rate: the layer uses ``T * weight_gain`` with ``T ~ N(0, 1)`` and
    ``weight_gain = 1 / (C sqrt(A))``. For inputs of unit variance, two samples' rows of M then differ
    by N(0, 2/C^2) per element, so their expected L1 distance over the C dims is 2/sqrt(pi) ~ 1.13
    and c_b ~ 0.3, where exp(-d) still has a useful gradient. (A tensor used as initialised, N(0, 1)
    as in many implementations, puts the distance at 2 C sqrt(A/pi), 45 for A = 64 and C = 5: every
    c_b underflows to 0 and the layer neither measures nor learns anything.) The gain is applied in
    the forward rather than folded into the initial values, as ProGAN's equalized learning rate and
    this package's equalized layers do: Adam's steps have a fixed size per parameter, so a T stored
    at std 1/(C sqrt(A)) (0.025 for A = 64, C = 5) would change by a far larger fraction per step
    than D's other weights. In the mixture-of-Gaussians example (Adam, D learning rate 4e-3, two
    seeds) a T stored small covered 3 and 4 of the ring's 8 modes, with D flagged as overpowering,
    and the gain in the forward 7 and 8; on the grid neither helped (5 and 4 of 25 modes stored
    small, 0 and 8 with the gain; the unregularised D 14 and 9).

    ``T`` is cast to x's dtype, as the equalized layers do with their weights.
    """

    def __init__(self, in_features, num_kernels, kernel_dim):
        super().__init__()
        self.in_features = _checks.count(in_features, "in_features")
        self.num_kernels = _checks.count(num_kernels, "num_kernels")
        self.kernel_dim = _checks.count(kernel_dim, "kernel_dim")
        self.T = torch.nn.Parameter(torch.empty(self.in_features, self.num_kernels, self.kernel_dim))
        self.weight_gain = 1.0 / (self.kernel_dim * math.sqrt(self.in_features))
        self.reset_parameters()

    def reset_parameters(self):
        """``T ~ N(0, 1)``; as torch.nn.Linear's, for a layer built on the meta device and then given
        memory (``to_empty``)."""
        with torch.no_grad():
            self.T.normal_()

    def forward(self, x):
        _checks.check_floating(x, "x")
        # matmul does not check this for a meta x: the output was a meta tensor, silently.
        _checks.same_device(x, self.T, "x", "T")
        if x.dim() != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"x must be a 2-D tensor [N, in_features={self.in_features}], got shape {list(x.shape)}")
        t = self.T.to(x.dtype) * self.weight_gain
        m = (x @ t.flatten(1)).unflatten(1, (self.num_kernels, self.kernel_dim))
        return torch.cat([x, minibatch_discrimination(m).to(x.dtype)], dim=1)

    def extra_repr(self):
        return f"in_features={self.in_features}, num_kernels={self.num_kernels}, kernel_dim={self.kernel_dim}"
