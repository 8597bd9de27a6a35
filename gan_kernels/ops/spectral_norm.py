"""Batched spectral normalisation (PyTorch's ``parametrizations.spectral_norm``, many layers at once).

``spectral_norm_power_iteration_`` updates the power-iteration vectors u, v of a whole list of
weights in place and returns their sigmas; ``spectral_norm_normalize`` returns every ``W / sigma``.
Each is one op call whatever the number of weights. A weight is seen as the matrix with ``dims[i]``
moved first and the other dims flattened, as PyTorch does.
"""
import math

import torch

from .. import _backend, _checks, reference


def _check_lists(weights, us, vs, dims):
    for arg, values in (("weights", weights), ("us", us), ("vs", vs), ("dims", dims)):
        if not isinstance(values, (list, tuple)):
            raise TypeError(f"{arg} must be a list, got {type(values).__name__}")
    for arg, values in (("us", us), ("vs", vs), ("dims", dims)):
        if len(values) != len(weights):
            raise ValueError(f"{arg} has {len(values)} entries but weights has {len(weights)}")
    for index, weight in enumerate(weights):
        _checks.check_floating(weight, f"weights[{index}]")


def check_n_power_iterations(value, arg="n_power_iterations", minimum=1):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{arg} must be an integer >= {minimum}, got {value!r}")


def check_positive_eps(value, arg="eps"):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{arg} must be a finite number > 0, got {value!r}")


def _use_compiled(weights):
    return bool(weights) and _backend.use_compiled(weights[0].device)


def spectral_norm_power_iteration_(weights, us, vs, dims, n_power_iterations=1, eps=1e-12):
    """Runs ``n_power_iterations`` steps of ``u = normalize(W v)``, ``v = normalize(W^T u)`` on every
    weight, updating ``us`` and ``vs`` in place, and returns ``sigma_i = u_i . (W_i v_i)`` as one 1-D
    tensor. ``n_power_iterations=0`` only computes the sigmas (eval mode). Runs without autograd, in
    the weights' dtype even under autocast."""
    _check_lists(weights, us, vs, dims)
    check_n_power_iterations(n_power_iterations, minimum=0)
    check_positive_eps(eps)
    dims = [int(d) for d in dims]
    with torch.no_grad():
        if _use_compiled(weights):
            return torch.ops.gan_kernels.spectral_norm_power_iteration_(
                list(weights), list(us), list(vs), dims, n_power_iterations, float(eps)
            )
        return reference.spectral_norm_power_iteration_(weights, us, vs, dims, n_power_iterations, eps)


def spectral_norm_normalize(weights, us, vs, sigmas, dims):
    """``[W_i / sigma_i]``, differentiable in W to any order with ``sigma_i = u_i . (W_i v_i)`` (u, v
    constants). ``sigmas`` must be what spectral_norm_power_iteration_ returned for these u, v; the
    compiled op uses them instead of recomputing, the reference recomputes them."""
    _check_lists(weights, us, vs, dims)
    dims = [int(d) for d in dims]
    if _use_compiled(weights):
        return torch.ops.gan_kernels.spectral_norm_normalize(list(weights), list(us), list(vs), sigmas, dims)
    return reference.spectral_norm_normalize(weights, us, vs, dims)


def _weight_shaped(matrix, weight, dim):
    """Inverse of reference.spectral_weight_matrix: a [rows, cols] matrix back in ``weight``'s shape."""
    permuted = [weight.shape[dim]] + [s for d, s in enumerate(weight.shape) if d != dim]
    inverse = [0] * weight.dim()
    for position, d in enumerate([dim] + [d for d in range(weight.dim()) if d != dim]):
        inverse[d] = position
    return matrix.reshape(permuted).permute(inverse)


def _normalize_backward_grads(upstream, grad, weight, u, v, dim, need_grad, need_weight):
    """VJP of B(G, W) = (G - <G, W/s> a) / s, a = u v^T, s = <a, W>, against ``upstream``; in aten ops
    (with s recomputed from W) so that it is differentiable again."""
    compute = reference._compute_dtype(weight)
    up, g, w = upstream.to(compute), grad.to(compute), weight.to(compute)
    uc, vc = u.to(compute), v.to(compute)
    a = _weight_shaped(torch.outer(uc, vc), w, dim)
    s = torch.vdot(uc, torch.mv(reference.spectral_weight_matrix(w, dim), vc))
    up_a = (up * a).sum()
    grad_grad = grad_weight = None
    if need_grad:
        grad_grad = ((up - up_a * w / s) / s).to(grad.dtype)
    if need_weight:
        up_g, g_w = (up * g).sum(), (g * w).sum()
        grad_weight = ((2 * g_w * up_a / s * a - up_g * a - up_a * g) / s.square()).to(weight.dtype)
    return grad_grad, grad_weight


def _setup_normalize(ctx, inputs, output):
    weights, us, vs, sigmas, dims = inputs
    ctx.save_for_backward(*weights, *us, *vs, sigmas)
    ctx.count, ctx.dims = len(weights), dims


def _unpack(ctx):
    saved, n = ctx.saved_tensors, ctx.count
    return list(saved[:n]), list(saved[n : 2 * n]), list(saved[2 * n : 3 * n]), saved[3 * n :]


def _dense_grads(grads, like):
    # Outputs that took no part in the loss arrive as None.
    return [torch.zeros_like(w) if g is None else g for g, w in zip(grads, like)]


def _normalize_backward(ctx, grads):
    weights, us, vs, rest = _unpack(ctx)
    (sigmas,) = rest
    grads = _dense_grads(grads, weights)
    grad_weights = torch.ops.gan_kernels.spectral_norm_normalize_backward(grads, weights, us, vs, sigmas, ctx.dims)
    no_grads = [None] * ctx.count
    return grad_weights, no_grads, no_grads, None, None


def _setup_normalize_backward(ctx, inputs, output):
    grads, weights, us, vs, sigmas, dims = inputs
    ctx.save_for_backward(*weights, *us, *vs, *grads)
    ctx.count, ctx.dims = len(weights), dims


def _normalize_backward_backward(ctx, upstreams):
    weights, us, vs, grads = _unpack(ctx)
    upstreams = _dense_grads(upstreams, weights)
    grad_grads, grad_weights = [], []
    for up, g, w, u, v, dim in zip(upstreams, grads, weights, us, vs, ctx.dims):
        gg, gw = _normalize_backward_grads(up, g, w, u, v, dim, True, True)
        grad_grads.append(gg)
        grad_weights.append(gw)
    no_grads = [None] * ctx.count
    return grad_grads, grad_weights, no_grads, no_grads, None, None


def _fake_sigmas(weights, us, vs, dims, n_power_iterations, eps):
    if not weights:
        return torch.empty(0)
    return weights[0].new_empty(len(weights))


def _fake_normalized(weights, us, vs, sigmas, dims):
    return [torch.empty_like(w, memory_format=torch.contiguous_format) for w in weights]


def register():
    torch.library.register_fake("gan_kernels::spectral_norm_power_iteration_", _fake_sigmas)
    torch.library.register_fake("gan_kernels::spectral_norm_normalize", _fake_normalized)
    torch.library.register_fake(
        "gan_kernels::spectral_norm_normalize_backward",
        lambda grads, weights, us, vs, sigmas, dims: _fake_normalized(weights, us, vs, sigmas, dims),
    )
    # The power iteration mutates u, v and returns constants (as PyTorch's runs under no_grad);
    # register_autograd does not accept mutating ops, and sigma's derivative is carried by the
    # normalisation ops below.
    torch.library.register_autograd(
        "gan_kernels::spectral_norm_normalize", _normalize_backward, setup_context=_setup_normalize
    )
    torch.library.register_autograd(
        "gan_kernels::spectral_norm_normalize_backward",
        _normalize_backward_backward,
        setup_context=_setup_normalize_backward,
    )
