"""Per-sample gradient penalty of a gradient tensor ``g`` of shape [N, ...]:
``(||g_i||_2 - center)^2``, and exactly ``sum(g_i^2)`` (no sqrt) for ``center == 0``.

Derivatives at ``||g_i|| = 0``: for ``center == 0`` the formula is smooth (the gradient ``2 g`` is
0 there). For ``center != 0`` the gradient ``2 (1 - center/||g||) g`` has no limit at 0; every
derivative of every order is defined as 0 there, as ``torch.linalg.vector_norm``'s backward does
for the first derivative. No derivative of a finite sample is ever NaN or Inf.

A diverged sample stays visible: a NaN element makes the sample's penalty NaN, an infinite one
makes it inf; for ``center != 0`` every element of such a sample gets a NaN gradient (``g/||g||``
has no value), for ``center == 0`` the gradient ``2 g`` is NaN or inf exactly where g is.

fp16/bf16 gradients give float32 penalties: they are summed in float32, and ``(||g|| - c)^2``
passes fp16's largest value at ``|g|`` of about 256.

The op ``gan_kernels::gradient_penalty`` also returns each sample's ``sum(g_i^2)``, which its
backward ``gradient_penalty_backward(grad, g, sum_squares, center)`` takes instead of recomputing
the norms: one pass over g. That output is not differentiable; it is a function of g, so the
backward's own derivative with respect to g is the total one (through the norms as well).
"""

import math

import torch

from .. import _backend, _checks, reference


def per_sample_penalty(g, center=1.0):
    """``(||g_i||_2 - center)^2`` for each sample ``g_i`` of ``g`` ([N, ...] -> [N]), reduced over
    every non-batch dim; ``sum(g_i^2)`` exactly when ``center == 0``.

    Any floating dtype (fp16/bf16 accumulate in float32 and return float32), any layout,
    differentiable to any order. One deterministic pass forward, one pass backward.
    """
    _checks.tensor(g, "g")
    if _backend.use_compiled(g.device, g):  # the op checks g and center (csrc/ops/gradient_penalty.cpp)
        return torch.ops.gan_kernels.gradient_penalty(g, _checks.real(center, "center"))[0]
    return reference.per_sample_penalty(g, _check_args(g, center))


def _check_args(g, center):
    """The checks of csrc/ops/gradient_penalty.cpp, with the same messages: for the reference and the
    fake kernels. Returns center as a float."""
    _checks.check_floating(g, "g")
    if g.dim() == 0:
        raise ValueError("g must have a batch dimension, got a 0-dimensional tensor")
    return _checks.nonnegative(center, "center")


def _fake_forward(g, center):
    _check_args(g, center)
    per_sample = g.new_empty(g.shape[:1], dtype=reference._compute_dtype(g))
    return per_sample, torch.empty_like(per_sample)


def _check_per_sample(t, arg, g):
    """csrc/ops/gradient_penalty.cpp's check of the backward's per-sample vectors, same messages."""
    _checks.same_device(t, g, arg, "g")
    penalty_dtype = reference._compute_dtype(g)
    if t.dtype != penalty_dtype:
        raise TypeError(f"{arg} has dtype {t.dtype} but the penalty of g ({g.dtype}) has dtype {penalty_dtype}")
    if t.dim() != 1 or t.shape[0] != g.shape[0]:
        raise ValueError(f"{arg} has shape {list(t.shape)} but expected [{g.shape[0]}], one value per sample of g")


def _fake_backward(grad, g, sum_squares, center):
    _check_args(g, center)
    _check_per_sample(grad, "grad", g)
    _check_per_sample(sum_squares, "sum_squares", g)
    return torch.empty_like(g)


def _backward_of_backward(upstream, grad, g, center):
    """Derivatives of the backward ``dL/dg = grad_i * s_i * g`` with ``s_i = 2 (1 - center/||g_i||)``
    (0 where ``||g_i|| = 0`` and center != 0), contracted with ``upstream`` (shaped like g):

      d/dgrad_i = s_i <u_i, g_i>
      d/dg      = grad_i s_i u + 2 center grad_i <u_i, g_i> / ||g_i||^3 g

    d/dg is the total derivative, the norms' dependence on g included: the norms are recomputed
    from g here rather than taken from the forward's (non-differentiable) sums of squares.
    Written in aten ops, with the zero-norm branch kept out of every division, so that it is itself
    differentiable (third and higher derivatives) and finite at ||g_i|| = 0.
    """
    compute = reference._compute_dtype(g)
    n, m = g.shape[0], math.prod(g.shape[1:])
    u = upstream.to(compute).reshape(n, m)
    gc = g.to(compute).reshape(n, m)
    go = grad.to(compute)
    dot = reference.row_sums(u * gc)
    if center == 0:
        grad_grad = 2 * dot
        grad_g = (2 * go)[:, None] * u
    else:
        sum_squares = reference.row_sums(gc.square())
        nonzero = sum_squares != 0
        inv_norm = torch.where(nonzero, sum_squares.where(nonzero, 1.0).rsqrt(), 0.0)
        inv_norm = inv_norm.where(sum_squares.isfinite(), float("nan"))  # a diverged sample
        scale = torch.where(nonzero, 2 * (1 - center * inv_norm), 0.0)
        grad_grad = scale * dot
        # 1/||g||^3 as (<u, g>/||g||) (1/||g||) (g/||g||): each factor stays finite wherever the result
        # does, where inv_norm^3 overflowed float32 for ||g|| < 1e-13 and gave inf and inf * 0 = NaN.
        grad_g = (go * scale)[:, None] * u + (2 * center * go * (dot * inv_norm) * inv_norm)[:, None] * (
            gc * inv_norm[:, None]
        )
    return grad_grad.to(grad.dtype), grad_g.reshape(g.shape).to(g.dtype)


def _setup_backward(ctx, inputs, output):
    grad, g, _sum_squares, center = inputs
    ctx.save_for_backward(grad, g)
    ctx.center = center


def _backward_backward(ctx, upstream):
    grad, g = ctx.saved_tensors
    grad_grad, grad_g = _backward_of_backward(upstream, grad, g, ctx.center)
    return grad_grad, grad_g, None, None


def register():
    torch.library.register_fake("gan_kernels::gradient_penalty", _fake_forward)
    torch.library.register_fake("gan_kernels::gradient_penalty_backward", _fake_backward)
    torch.library.register_autograd(
        "gan_kernels::gradient_penalty_backward", _backward_backward, setup_context=_setup_backward
    )
