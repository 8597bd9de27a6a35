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


def _backward_grad_x(upstream, grad, x, dim, eps):
    """d/dx of <upstream, J(x) grad>, with J(x) grad = r grad - r^3 x mean(grad x), r = rsqrt(mean(x^2) + eps).

    Written in aten ops so that it is itself differentiable (third and higher derivatives).
    """
    compute = reference._compute_dtype(x)
    u, g, xc = upstream.to(compute), grad.to(compute), x.to(compute)

    def mean(t):
        return t.mean(dim=dim, keepdim=True)

    r = (mean(xc.square()) + eps).rsqrt()
    m_ug, m_ux, m_gx = mean(u * g), mean(u * xc), mean(g * xc)
    grad_x = -r.pow(3) * (m_ug * xc + u * m_gx + g * m_ux - 3 * r.square() * xc * m_ux * m_gx)
    return grad_x.to(x.dtype)


def _fake_forward(x, dim, eps):
    _check_args(x, dim, eps)
    return torch.empty_like(x)


def _fake_backward(grad, x, dim, eps):
    _check_args(x, dim, eps)
    return torch.empty_like(x)


def _setup_forward(ctx, inputs, output):
    x, dim, eps = inputs
    ctx.save_for_backward(x)
    ctx.dim, ctx.eps = dim, eps


def _forward_backward(ctx, grad):
    (x,) = ctx.saved_tensors
    return torch.ops.gan_kernels.pixel_norm_backward(grad, x, ctx.dim, ctx.eps), None, None


def _setup_backward(ctx, inputs, output):
    grad, x, dim, eps = inputs
    ctx.save_for_backward(grad, x)
    ctx.dim, ctx.eps = dim, eps


def _backward_backward(ctx, upstream):
    grad, x = ctx.saved_tensors
    # The Jacobian of pixel norm is symmetric, so the backward is linear in grad with that same Jacobian.
    grad_grad = torch.ops.gan_kernels.pixel_norm_backward(upstream, x, ctx.dim, ctx.eps)
    grad_x = _backward_grad_x(upstream, grad, x, ctx.dim, ctx.eps) if ctx.needs_input_grad[1] else None
    return grad_grad, grad_x, None, None


def register():
    torch.library.register_fake("gan_kernels::pixel_norm", _fake_forward)
    torch.library.register_fake("gan_kernels::pixel_norm_backward", _fake_backward)
    torch.library.register_autograd("gan_kernels::pixel_norm", _forward_backward, setup_context=_setup_forward)
    torch.library.register_autograd(
        "gan_kernels::pixel_norm_backward", _backward_backward, setup_context=_setup_backward
    )
