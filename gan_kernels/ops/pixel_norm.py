"""Pixel norm: ``y = x * rsqrt(mean(x^2, dim) + eps)`` (ProGAN PixelNorm, StyleGAN normalize_2nd_moment)."""

import torch

from .. import _backend, _checks, reference


def pixel_norm(x, dim=1, eps=1e-8):
    """Normalise ``x`` to unit mean square along ``dim``: ``x * rsqrt(mean(x^2, dim) + eps)``.

    Any floating dtype (fp16/bf16 accumulate in float32), any layout (channels_last included),
    differentiable to any order.
    """
    _checks.tensor(x, "x")
    if x.dim() == 0:  # the kernels index a dim; a 0-d tensor is one vector of one element
        _checks.wrap_dim(dim, x, "dim")
        return pixel_norm(x.reshape(1), 0, eps).reshape(())
    if _backend.use_compiled(x.device, x):  # the op checks x, dim and eps (csrc/ops/pixel_norm.cpp)
        return torch.ops.gan_kernels.pixel_norm(x, _checks.int64(dim, "dim"), _checks.real(eps, "eps"))
    return reference.pixel_norm(x, *_check_args(x, dim, eps))


def _check_args(x, dim, eps):
    """The checks of csrc/ops/pixel_norm.cpp, with the same messages: for the reference and the fake
    kernels. Returns dim wrapped and eps as a float."""
    _checks.check_floating(x, "x")
    return _checks.wrap_dim(dim, x, "dim"), _checks.nonnegative(eps, "eps")


def _fake_forward(x, dim, eps):
    _check_args(x, dim, eps)
    return torch.empty_like(x)


def _fake_backward(grad, x, dim, eps):
    _check_args(x, dim, eps)
    _checks.same(grad, x, "grad", "x")
    return torch.empty_like(x)


def register():
    """The fake kernels; both ops' autograd is registered in C++ (csrc/ops/pixel_norm.cpp)."""
    torch.library.register_fake("gan_kernels::pixel_norm", _fake_forward)
    torch.library.register_fake("gan_kernels::pixel_norm_backward", _fake_backward)
