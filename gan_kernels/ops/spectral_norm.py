"""Batched spectral normalisation (PyTorch's ``parametrizations.spectral_norm``, many layers at once).

``spectral_norm_power_iteration_`` updates the power-iteration vectors u, v of a whole list of
weights in place and returns their sigmas; ``spectral_norm_normalize`` returns every ``W / sigma``.
Each is one op call whatever the number of weights. A weight is seen as the matrix with ``dims[i]``
moved first and the other dims flattened, as PyTorch does. ``spectral_norm_one_`` is one layer's
forward (the per-layer path of nn.spectral_norm) on the single-weight ops, which give the same bits.
"""

import math

import torch

from .. import _backend, _checks, reference

# Real weights run on the compiled ops; complex ones (which PyTorch's spectral norm accepts) on the
# reference, whose mv / .H / vdot are PyTorch's own complex formulas.
_COMPLEX_DTYPES = (torch.complex64, torch.complex128)


def check_weight_dtype(weight, arg):
    _checks.tensor(weight, arg)
    if weight.dtype not in _checks.FLOAT_DTYPES + _COMPLEX_DTYPES:
        raise TypeError(
            f"{arg} must be float64, float32, float16, bfloat16, complex64 or complex128, got {weight.dtype}"
        )


def _check_weight(weight, arg):
    check_weight_dtype(weight, arg)
    if weight.dim() < 2:
        raise ValueError(f"{arg} must have at least 2 dimensions, got shape {list(weight.shape)}")


def _entries(arg, values):
    """``(arg, index, tensor)`` for each entry of the list ``arg``; the index is named only in an error,
    as building every entry's name cost more than checking it."""
    return [(arg, index, t) for index, t in enumerate(values)]


def _check_same_device(entries, device):
    """Every tensor of ``entries`` (``_entries``, or ``(arg, None, tensor)`` for a single tensor) on
    ``device`` (weights[0]'s). A tensor elsewhere would make the dispatcher pick another device's
    kernel for the whole call: a `meta` entry, for one, runs the fake kernel and returns
    uninitialised values."""
    for arg, index, t in entries:
        if isinstance(t, torch.Tensor) and t.device == device:
            continue
        name = arg if index is None else f"{arg}[{index}]"
        _checks.tensor(t, name)
        if t.device != device:
            raise ValueError(
                f"{name} is on {t.device} but weights[0] is on {device}: "
                f"every tensor of the call must be on one device (move it to {device})"
            )


def _check_no_shared_memory(us, vs):
    """The power iteration writes every u and v in place: one tensor given for two layers would race.
    Mirrors the compiled op's check (its message too), so the reference rejects the same input."""
    ranges = []
    for arg, values in (("us", us), ("vs", vs)):
        for index, t in enumerate(values):
            if t.numel() and t.device.type != "meta":  # no memory, nothing to share
                begin = t.data_ptr()
                ranges.append((begin, begin + t.numel() * t.element_size(), f"{arg}[{index}]"))
    # Sorted by start, any overlap shows up between neighbours; stable, as the compiled op's, so that
    # for equal starts the message names the entries in argument order.
    ranges.sort(key=lambda entry: entry[0])
    for (_, previous_end, previous), (begin, _, current) in zip(ranges, ranges[1:]):
        if begin < previous_end:
            raise ValueError(
                f"{previous} and {current} share memory; the power iteration updates each in place, "
                "so every layer needs its own u and v tensors (clone one of them)"
            )


def _check_lists(weights, us, vs, dims):
    """Checks the lists and returns ``dims`` as ints wrapped into [0, ndim), as PyTorch wraps dims:
    everything downstream (the backward's reshapes, the reference) sees non-negative dims."""
    for arg, values in (("weights", weights), ("us", us), ("vs", vs), ("dims", dims)):
        if not isinstance(values, (list, tuple)):
            raise TypeError(f"{arg} must be a list, got {type(values).__name__}")
    for arg, values in (("us", us), ("vs", vs), ("dims", dims)):
        if len(values) != len(weights):
            raise ValueError(f"{arg} has {len(values)} entries but weights has {len(weights)}")
    for index, weight in enumerate(weights):
        _check_weight(weight, f"weights[{index}]")
    if weights:
        _check_same_device(_entries("weights", weights) + _entries("us", us) + _entries("vs", vs), weights[0].device)
    return [_checks.wrap_dim(dim, weight, f"dims[{index}]") for index, (weight, dim) in enumerate(zip(weights, dims))]


def _check_vectors(weights, us, vs, dims, sigmas=None):
    """The checks of csrc/ops/spectral_norm.cpp on u, v (and sigmas) that the compiled path leaves to
    the op, with its messages: for the reference, which would otherwise take weights of several
    dtypes (returning their sigmas promoted to one), a u of another dtype
    (an integer u truncates every update to 0 and returns sigma 0) or of a wrong length (an error
    from mv naming nothing). ``dims`` wrapped already. Contiguity is the kernels' need, not the
    reference's, which updates a strided u correctly."""
    for index, (weight, u, v, dim) in enumerate(zip(weights, us, vs, dims)):
        # One dtype per call, as the ops' one sigmas tensor (the reference's stack promoted them).
        _checks.same_dtype(weight, weights[0], f"weights[{index}]", "weights[0]")
        rows = weight.shape[dim]
        cols = math.prod([size for d, size in enumerate(weight.shape) if d != dim])
        for arg, vector, length in (("us", u, rows), ("vs", v, cols)):
            name = f"{arg}[{index}]"
            _checks.same_dtype(vector, weight, name, f"weights[{index}]")
            if vector.dim() != 1 or vector.shape[0] != length:
                raise ValueError(
                    f"{name} must have shape [{length}] to match weights[{index}], got {list(vector.shape)}"
                )
    if sigmas is not None:
        if sigmas.dim() != 1 or sigmas.shape[0] != len(weights):
            raise ValueError(f"sigmas must have shape [{len(weights)}] (one per weight), got {list(sigmas.shape)}")
        if weights:
            _checks.same_dtype(sigmas, weights[0], "sigmas", "weights[0]")


def _use_compiled(weights, *tensors):
    """Real weights on a device with kernels; not under forward-mode AD (see _backend.use_compiled)."""
    return (
        bool(weights)
        and weights[0].dtype not in _COMPLEX_DTYPES
        and _backend.use_compiled(weights[0].device, *weights, *tensors)
    )


def spectral_norm_power_iteration_(weights, us, vs, dims, n_power_iterations=1, eps=1e-12):
    """Runs ``n_power_iterations`` steps of ``u = normalize(W v)``, ``v = normalize(W^T u)`` on every
    weight, updating ``us`` and ``vs`` in place, and returns ``sigma_i = u_i . (W_i v_i)`` as one 1-D
    tensor. ``n_power_iterations=0`` only computes the sigmas (eval mode). Runs without autograd, in
    the weights' dtype even under autocast. Complex weights run on the reference (``W^H``, ``vdot``
    as PyTorch's spectral norm)."""
    dims = _check_lists(weights, us, vs, dims)
    n_power_iterations = _checks.count(n_power_iterations, "n_power_iterations", minimum=0)
    eps = _checks.finite(eps, "eps")
    with torch.no_grad():
        if _use_compiled(weights):  # the op checks that no two of us, vs share memory
            return torch.ops.gan_kernels.spectral_norm_power_iteration_(
                list(weights), list(us), list(vs), dims, n_power_iterations, eps
            )
        if not torch.compiler.is_compiling():  # traced tensors have no addresses
            _check_no_shared_memory(us, vs)
        _check_vectors(weights, us, vs, dims)
        return reference.spectral_norm_power_iteration_(weights, us, vs, dims, n_power_iterations, eps)


def spectral_norm_normalize(weights, us, vs, sigmas, dims):
    """``[W_i / sigma_i]``, differentiable in W to any order with ``sigma_i = u_i . (W_i v_i)`` (u, v
    constants). ``sigmas`` must be what spectral_norm_power_iteration_ returned for these u, v; the
    compiled op uses them instead of recomputing, the reference recomputes them."""
    return normalize_checked(weights, us, vs, sigmas, _check_lists(weights, us, vs, dims))


def normalize_checked(weights, us, vs, sigmas, dims):
    """spectral_norm_normalize of lists that have passed its list checks (``dims`` wrapped), as those
    of a spectral_norm_power_iteration_ call just made: the batched group's, which would otherwise
    check every layer twice in each model forward."""
    if weights:
        _check_same_device([("sigmas", None, sigmas)], weights[0].device)
    if _use_compiled(weights, *us, *vs, sigmas):
        return torch.ops.gan_kernels.spectral_norm_normalize(list(weights), list(us), list(vs), sigmas, dims)
    _check_vectors(weights, us, vs, dims, sigmas)
    return reference.spectral_norm_normalize(weights, us, vs, dims)


def spectral_norm_one_(weight, u, v, dim, n_power_iterations, eps):
    """One layer's spectral norm: ``n_power_iterations`` steps on ``u``, ``v`` (in place), then
    ``(W / sigma, sigma)`` with sigma detached and ``W / sigma`` differentiable as
    spectral_norm_normalize's. For the layer, which has checked its arguments once: the compiled path
    leaves the remaining checks to the ops, so a small layer costs a few op calls, no list handling
    and no Python autograd."""
    if weight.dtype in _COMPLEX_DTYPES or not _backend.use_compiled(weight.device, weight, u, v):
        sigmas = spectral_norm_power_iteration_([weight], [u], [v], [dim], n_power_iterations, eps)
        u, v = _snapshot(u), _snapshot(v)
        return spectral_norm_normalize([weight], [u], [v], sigmas, [dim])[0], sigmas[0]
    ops = torch.ops.gan_kernels
    sigma = ops.spectral_norm_power_iteration_one_(weight.detach(), u, v, dim, n_power_iterations, eps)
    return ops.spectral_norm_normalize_one(weight, _snapshot(u), _snapshot(v), sigma, dim), sigma


def _snapshot(vector):
    # As PyTorch's clones: the next forward updates u, v in place, and this forward's graph
    # (D(real) - D(fake)) must keep the values it used.
    return vector.clone(memory_format=torch.contiguous_format)


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
    # Every sum over the weight in a fixed order (not torch.mv / vdot / sum), so that the double
    # backward keeps the kernels' promise: the same bits on any thread count.
    s = reference.total_sum(a * w)
    up_a = reference.total_sum(up * a)
    grad_grad = grad_weight = None
    if need_grad:
        grad_grad = ((up - up_a * w / s) / s).to(grad.dtype)
    if need_weight:
        up_g, g_w = reference.total_sum(up * g), reference.total_sum(g * w)
        grad_weight = ((2 * g_w * up_a / s * a - up_g * a - up_a * g) / s.square()).to(weight.dtype)
    return grad_grad, grad_weight


def _wrapped_dims(dims, weights):
    # The op itself accepts negative dims (a direct torch.ops call); the backward's reshapes need them
    # in [0, ndim).
    return [dim % weight.dim() for dim, weight in zip(dims, weights)]


def _unpack(ctx):
    saved, n = ctx.saved_tensors, ctx.count
    return list(saved[:n]), list(saved[n : 2 * n]), list(saved[2 * n : 3 * n]), saved[3 * n :]


def _dense_grads(grads, like):
    # Outputs that took no part in the loss arrive as None.
    return [torch.zeros_like(w) if g is None else g for g, w in zip(grads, like)]


def _setup_normalize_backward(ctx, inputs, output):
    grads, weights, us, vs, sigmas, dims = inputs
    ctx.save_for_backward(*weights, *us, *vs, *grads)
    ctx.count, ctx.dims = len(weights), _wrapped_dims(dims, weights)


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


def _setup_normalize_one_backward(ctx, inputs, output):
    grad, weight, u, v, sigma, dim = inputs
    ctx.save_for_backward(weight, u, v, grad)
    ctx.dim = dim % weight.dim()


def _normalize_one_backward_backward(ctx, upstream):
    weight, u, v, grad = ctx.saved_tensors
    grad_grad, grad_weight = _normalize_backward_grads(upstream, grad, weight, u, v, ctx.dim, True, True)
    return grad_grad, grad_weight, None, None, None, None


def _check_fake_devices(weights, us, vs, others=()):
    # The dispatcher also picks these kernels when only a later entry is on `meta`: without this
    # check a CPU call with one meta u would return uninitialised sigmas.
    if weights:
        entries = _entries("weights", weights) + _entries("us", us) + _entries("vs", vs) + list(others)
        _check_same_device(entries, weights[0].device)


def _fake_sigmas(weights, us, vs, dims, n_power_iterations, eps):
    _check_fake_devices(weights, us, vs)
    if not weights:
        return torch.empty(0)
    return weights[0].new_empty(len(weights))


def _fake_normalized(weights, us, vs, sigmas, dims):
    _check_fake_devices(weights, us, vs, [("sigmas", None, sigmas)])
    return [torch.empty_like(w) for w in weights]  # W / sigma in W's memory order, as PyTorch's


def _fake_normalize_backward(grads, weights, us, vs, sigmas, dims):
    _check_fake_devices(weights, us, vs, [("sigmas", None, sigmas)] + _entries("grads", grads))
    return [torch.empty_like(w, memory_format=torch.contiguous_format) for w in weights]


def _fake_sigma(weight, u, v, dim, n_power_iterations, eps):
    _check_fake_devices([weight], [u], [v])
    return weight.new_empty(())


def _fake_normalized_one(weight, u, v, sigma, dim):
    _check_fake_devices([weight], [u], [v], [("sigma", None, sigma)])
    return torch.empty_like(weight)


def _fake_normalize_one_backward(grad, weight, u, v, sigma, dim):
    _check_fake_devices([weight], [u], [v], [("sigma", None, sigma), ("grad", None, grad)])
    return torch.empty_like(weight, memory_format=torch.contiguous_format)


def _no_vmap_rule(op_name):
    def rule(info, in_dims, *args):
        raise NotImplementedError(
            f"gan_kernels::{op_name} has no vmap rule: the spectral-norm ops are already batched over "
            "layers, so pass the weights as a list (spectral_norm_power_iteration_, spectral_norm_normalize) "
            "instead of vmapping over a batch dimension"
        )

    return rule


_OP_NAMES = (
    "spectral_norm_power_iteration_",
    "spectral_norm_normalize",
    "spectral_norm_normalize_backward",
    "spectral_norm_power_iteration_one_",
    "spectral_norm_normalize_one",
    "spectral_norm_normalize_one_backward",
)


def register():
    torch.library.register_fake("gan_kernels::spectral_norm_power_iteration_", _fake_sigmas)
    torch.library.register_fake("gan_kernels::spectral_norm_normalize", _fake_normalized)
    torch.library.register_fake("gan_kernels::spectral_norm_normalize_backward", _fake_normalize_backward)
    torch.library.register_fake("gan_kernels::spectral_norm_power_iteration_one_", _fake_sigma)
    torch.library.register_fake("gan_kernels::spectral_norm_normalize_one", _fake_normalized_one)
    torch.library.register_fake("gan_kernels::spectral_norm_normalize_one_backward", _fake_normalize_one_backward)
    # The power iteration mutates u, v and returns constants (as PyTorch's runs under no_grad);
    # register_autograd does not accept mutating ops, and sigma's derivative is carried by the
    # normalisation ops. Their autograd is in C++ (csrc/ops/spectral_norm.cpp: a Python one costs
    # more than a small layer's spectral norm); their backward ops' derivatives are here.
    torch.library.register_autograd(
        "gan_kernels::spectral_norm_normalize_backward",
        _normalize_backward_backward,
        setup_context=_setup_normalize_backward,
    )
    torch.library.register_autograd(
        "gan_kernels::spectral_norm_normalize_one_backward",
        _normalize_one_backward_backward,
        setup_context=_setup_normalize_one_backward,
    )
    # Without a rule, vmap fails with "Batching rule not implemented ... could not generate a
    # fallback", which does not say what to do instead.
    for op_name in _OP_NAMES:
        torch.library.register_vmap(f"gan_kernels::{op_name}", _no_vmap_rule(op_name))
