"""Minibatch discrimination (Salimans et al. 2016), its pairwise part: ``m`` [N, B, C] -> ``o`` [N, B],
``o[i, b] = sum_{j != i} exp(-sum_c |m[i, b, c] - m[j, b, c]|)``.

Three dispatcher ops. Per kernel b and pair i != j, with d = m_i - m_j, s = sign(d) (0 at a tie, the
derivative torch.abs's gradient uses), e = exp(-sum_c |d_c|) and g = dL/do:
  minibatch_discrimination                   o_i = sum_j e
  minibatch_discrimination_backward          dL/dm_i = -sum_j (g_i + g_j) e s
  minibatch_discrimination_double_backward   for U = dL/d(dL/dm) and t = <s, U_i - U_j>:
                                             dL/dg_i = -sum_j e t,  dL/dm_i = sum_j (g_i + g_j) e t s
The kernels sum over the partners j in a fixed order and never build a pair tensor ([N, N, B, C] or
[N, N, B]); only third and higher derivatives (not needed for R1) build [N, N-1, B, C] in aten ops.
"""

import torch

from .. import _backend, _checks, reference


def _check_m(m):
    """The checks of csrc/ops/minibatch_discrimination.cpp, with the same messages: for the reference
    and the fake kernels."""
    _checks.check_floating(m, "m")
    if m.dim() != 3:
        raise ValueError(f"m must be a 3-D tensor [N, B, C] (samples, kernels, kernel dims), got shape {list(m.shape)}")


def minibatch_discrimination(m):
    """``o[i, b] = sum_{j != i} exp(-sum_c |m[i, b, c] - m[j, b, c]|)`` for ``m`` [N, B, C] -> [N, B].

    Any floating dtype (fp16/bf16 accumulate in float32, float64 in float64; ``o`` has m's dtype),
    any layout, differentiable to any order. A batch of one gives 0. The derivative of |d| at a tie
    (two samples with equal values) is 0, as torch.abs's. The same bits whatever the thread count.
    """
    _checks.tensor(m, "m")
    if _backend.use_compiled(m.device, m):  # the op checks m (csrc/ops/minibatch_discrimination.cpp)
        return torch.ops.gan_kernels.minibatch_discrimination(m)
    _check_m(m)
    return reference.minibatch_discrimination(m)


def _third_order_terms(upstream, w, grad, m):
    """The parts of the double backward's derivative that are bilinear in (upstream, w), for
    t_U = <s, U_i - U_j> and t_W likewise: ``sum_j e t_U t_W`` [N, B] (by grad) and
    ``sum_j (g_i + g_j) e t_U t_W s`` [N, B, C] (by m, to be subtracted). In aten ops, which are
    differentiable again: sign's derivative is 0, abs's is sign(d) with 0 at a tie."""
    compute = reference._compute_dtype(m)
    differences = reference.differences_to_others(m.to(compute))  # [N, N-1, B, C]
    signs = differences.sign()
    similarity = torch.exp(-differences.abs().sum(dim=3))  # [N, N-1, B]

    def change_along(t):  # <s, t_i - t_j>
        return (signs * reference.differences_to_others(t.to(compute))).sum(dim=3)

    weight = similarity * change_along(upstream) * change_along(w)
    g = grad.to(compute)
    g_sums = reference.off_diagonal(g.unsqueeze(1) + g.unsqueeze(0))
    by_grad = weight.sum(dim=1)
    by_m = ((g_sums * weight).unsqueeze(3) * signs).sum(dim=1)
    return by_grad.to(grad.dtype), by_m.to(m.dtype)


def _total(terms):
    """The sum of the terms that exist; None (a zero gradient for autograd) when none does."""
    terms = [t for t in terms if t is not None]
    return sum(terms[1:], terms[0]) if terms else None


def _fake_forward(m):
    _check_m(m)
    return m.new_empty(m.shape[:2])


def _check_grad(grad, m):
    """csrc/ops/minibatch_discrimination.cpp's check of dL/do, same messages."""
    _checks.same(grad, m, "grad", "m", m.shape[:2], "the output of minibatch_discrimination")


def _fake_backward(grad, m):
    _check_m(m)
    _check_grad(grad, m)
    return torch.empty_like(m)


def _fake_double_backward(upstream, grad, m):
    _check_m(m)
    _check_grad(grad, m)
    _checks.same(upstream, m, "upstream", "m")
    return m.new_empty(m.shape[:2]), torch.empty_like(m)


def _setup_backward(ctx, inputs, output):
    grad, m = inputs
    ctx.save_for_backward(grad, m)


def _backward_backward(ctx, upstream):
    grad, m = ctx.saved_tensors
    return torch.ops.gan_kernels.minibatch_discrimination_double_backward(upstream, grad, m)


def _setup_double_backward(ctx, inputs, output):
    upstream, grad, m = inputs
    ctx.save_for_backward(upstream, grad, m)


def _double_backward_backward(ctx, w_grad, w_m):
    """Gradients of <w_grad, dL/dgrad> + <w_m, dL/dm> for (dL/dgrad, dL/dm) = double_backward(U, g, m).

    dL/dgrad is the forward's derivative along U, so by U it gives backward(w_grad); dL/dm is a
    symmetric bilinear form in U and w_m, so by U it gives double_backward(w_m, g, m)'s dL/dm. By m,
    <w_grad, dL/dgrad> gives double_backward(U, w_grad, m)'s dL/dm. The rest, bilinear in U and w_m,
    is _third_order_terms.
    """
    upstream, grad, m = ctx.saved_tensors
    ops = torch.ops.gan_kernels
    want_upstream, want_grad, want_m = ctx.needs_input_grad
    d_upstream = d_grad = d_m = None
    if want_upstream:
        d_upstream = _total(
            [
                ops.minibatch_discrimination_backward(w_grad, m) if w_grad is not None else None,
                ops.minibatch_discrimination_double_backward(w_m, grad, m)[1] if w_m is not None else None,
            ]
        )
    bilinear = _third_order_terms(upstream, w_m, grad, m) if w_m is not None and (want_grad or want_m) else None
    if want_grad and bilinear is not None:
        d_grad = bilinear[0]
    if want_m:
        d_m = _total(
            [
                -bilinear[1] if bilinear is not None else None,
                ops.minibatch_discrimination_double_backward(upstream, w_grad, m)[1] if w_grad is not None else None,
            ]
        )
    return d_upstream, d_grad, d_m


def register():
    torch.library.register_fake("gan_kernels::minibatch_discrimination", _fake_forward)
    torch.library.register_fake("gan_kernels::minibatch_discrimination_backward", _fake_backward)
    torch.library.register_fake("gan_kernels::minibatch_discrimination_double_backward", _fake_double_backward)
    torch.library.register_autograd(
        "gan_kernels::minibatch_discrimination_backward", _backward_backward, setup_context=_setup_backward
    )
    torch.library.register_autograd(
        "gan_kernels::minibatch_discrimination_double_backward",
        _double_backward_backward,
        setup_context=_setup_double_backward,
    )
