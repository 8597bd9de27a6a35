"""Minibatch standard deviation: StyleGAN2's ``MinibatchStdLayer`` (ProGAN/StyleGAN discriminator epilogue)."""

import torch

from .. import _backend, _checks, reference

EPS = 1e-8  # StyleGAN2's, inside the sqrt; not a parameter of the layer
# group_size=None, the whole batch, as G = min(group_size, N): a group size no batch exceeds, rather
# than N itself, which torch.compile and torch.export would specialise to the traced batch size.
WHOLE_BATCH = 2**63 - 1


def _check_args(x, group_size, num_channels):
    """The checks of csrc/ops/minibatch_std.cpp, with the same messages: for the reference and the fake
    kernels. Returns the counts as ints."""
    _checks.check_floating(x, "x")
    if x.dim() != 4:
        raise ValueError(f"x must be a 4-D tensor [N, C, H, W], got shape {list(x.shape)}")
    group_size = _checks.count(group_size, "group_size")
    num_channels = _checks.count(num_channels, "num_channels")
    n, c = x.shape[0], x.shape[1]
    if not (c > 0 and c % num_channels == 0):
        raise ValueError(
            f"the number of channels C={c} of x is not a positive multiple of num_channels F={num_channels}; "
            "use a num_channels that divides C"
        )
    g = min(group_size, n)
    # A whole batch divides itself; the tracer cannot tell that N % min(WHOLE_BATCH, N) is 0.
    if group_size != WHOLE_BATCH and n != 0 and n % g != 0:
        raise ValueError(
            f"batch size N={n} is not divisible by group size G={g}; "
            f"use a batch size that is a multiple of {g} or a group_size that divides {n}"
        )
    return group_size, num_channels


def minibatch_std(x, group_size=4, num_channels=1):
    """StyleGAN2's minibatch standard deviation: ``[N, C, H, W] -> [N, C + num_channels, H, W]``.

    Samples are grouped as StyleGAN2 does: G = min(group_size, N) (``group_size=None``: the whole
    batch), sample n in group n % (N/G). Channel C + f holds, for the sample's group, the mean over
    feature f's C/F channels and all pixels of sqrt(biased group variance + 1e-8). Statistics in
    float32 for fp16/bf16 (float64 for float64); the output has x's dtype. channels_last inputs
    give channels_last outputs, any other layout a contiguous one. Differentiable to any order.
    """
    _checks.tensor(x, "x")
    if group_size is None:
        group_size = WHOLE_BATCH
    if _backend.use_compiled(x.device, x):  # the op checks every argument (csrc/ops/minibatch_std.cpp)
        group_size, num_channels = _checks.int64(group_size, "group_size"), _checks.int64(num_channels, "num_channels")
        return torch.ops.gan_kernels.minibatch_std(x, group_size, num_channels)
    group_size, num_channels = _check_args(x, group_size, num_channels)
    if group_size == WHOLE_BATCH:  # N itself, which traces as a size: min(WHOLE_BATCH, N) would not reduce
        group_size = x.shape[0]
    return reference.minibatch_std(x, group_size, num_channels)


def _output_format(x):
    """Memory format of the ops' outputs: must agree with output_format in csrc/ops/minibatch_std.cpp."""
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def _output_shape(x, num_channels):
    n, c, h, w = x.shape
    return [n, c + num_channels, h, w]


def _fake_forward(x, group_size, num_channels):
    _check_args(x, group_size, num_channels)
    return torch.empty(_output_shape(x, num_channels), dtype=x.dtype, device=x.device, memory_format=_output_format(x))


def _fake_backward(grad, x, group_size, num_channels):
    _check_args(x, group_size, num_channels)
    _checks.same(grad, x, "grad", "x", _output_shape(x, num_channels), "the output of minibatch_std")
    return torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=_output_format(x))


def _fake_double_backward(upstream, grad, x, group_size, num_channels):
    _check_args(x, group_size, num_channels)
    _checks.same(upstream, x, "upstream", "x")
    _checks.same(grad, x, "grad", "x", _output_shape(x, num_channels), "the output of minibatch_std")
    fmt = _output_format(x)
    return (
        torch.empty(grad.shape, dtype=x.dtype, device=x.device, memory_format=fmt),
        torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=fmt),
    )


def _setup_backward(ctx, inputs, output):
    grad, x, group_size, num_channels = inputs
    ctx.save_for_backward(grad, x)
    ctx.group_size, ctx.num_channels = group_size, num_channels


def _backward_backward(ctx, upstream):
    grad, x = ctx.saved_tensors
    grad_grad, grad_x = torch.ops.gan_kernels.minibatch_std_double_backward(
        upstream, grad, x, ctx.group_size, ctx.num_channels
    )
    return grad_grad, grad_x, None, None


def _setup_double_backward(ctx, inputs, output):
    upstream, grad, x, group_size, num_channels = inputs
    ctx.save_for_backward(upstream, grad, x)
    ctx.group_size, ctx.num_channels = group_size, num_channels


def _double_backward_backward(ctx, w_grad, w_x):
    """Gradients of <w_grad, dL/dgrad> + <w_x, dL/dx> for (dL/dgrad, dL/dx) = double_backward(u, grad, x).

    Per group position (G members, d = x - mean(x), s = sqrt(mean(d^2) + eps)) and feature block
    of K = C/F*H*W positions, with a = sum(grad[:, C:]) / (K G) and P = sum(u d):
    dL/dgrad = [u, sum(u d / s) / (K G)] and dL/dx = a e, e = (u - mean(u)) / s - P d / (G s^3).
    The u-dependence is the backward's (through w_grad) and a symmetric operator (through w_x), both
    our ops; so is the x-dependence through the stddev channel of w_grad. The rest is aten ops
    (differentiable, for fourth and higher derivatives): with R = sum(w_x (u - mean(u))), Q = sum(w_x d),
    d<w_x, a e>/dx = a (-R d / (G s^3) - ((u - mean(u)) Q + P (w_x - mean(w_x))) / (G s^3) + 3 P Q d / (G^2 s^5))
    and d<w_x, a e>/dgrad has sum(w_x e) / (K G) on the stddev channels, 0 elsewhere.
    """
    upstream, grad, x = ctx.saved_tensors
    group_size, num_channels = ctx.group_size, ctx.num_channels
    w_grad = torch.zeros_like(grad) if w_grad is None else w_grad
    w_x = torch.zeros_like(x) if w_x is None else w_x
    want_upstream, want_grad, want_x = ctx.needs_input_grad[:3]
    n, c, h, w = x.shape
    f = num_channels
    if x.numel() == 0:
        empty = [torch.zeros_like(t) if want else None for t, want in zip((upstream, grad, x), ctx.needs_input_grad)]
        return (*empty, None, None)
    ops = torch.ops.gan_kernels
    d_upstream = d_grad = d_x = None
    if want_upstream:
        d_upstream = ops.minibatch_std_backward(w_grad, x, group_size, num_channels)
        d_upstream = d_upstream + ops.minibatch_std_double_backward(w_x, grad, x, group_size, num_channels)[1]
    if want_grad or want_x:
        g = min(group_size, n)
        m, k = n // g, (c // f) * h * w
        compute = reference._compute_dtype(x)

        def grouped(t):
            return t.to(compute).reshape(g, m, f, c // f, h, w)

        xg, ug, wg = grouped(x), grouped(upstream), grouped(w_x)
        d = xg - xg.mean(dim=0)
        s = (d.square().mean(dim=0) + EPS).sqrt()
        d = d - d.mean(dim=0)  # the kernels' centring (csrc/cuda/minibatch_std_layout.h)
        u_centred = ug - ug.mean(dim=0)
        p = (ug * d).sum(dim=0)
        if want_grad:
            e = u_centred / s - p * d / (g * s.pow(3))
            stat = (wg * e).sum(dim=[0, 3, 4, 5]) / (k * g)  # [M, F]
            stat = stat.reshape(1, m, f, 1, 1).expand(g, m, f, h, w).reshape(n, f, h, w)
            d_grad = torch.cat([torch.zeros_like(x, dtype=compute), stat], dim=1).to(grad.dtype)
        if want_x:
            a = grad[:, c:].to(compute).reshape(g, m, f, h, w).sum(dim=[0, 3, 4]) / (k * g)
            r = (wg * u_centred).sum(dim=0)
            q = (wg * d).sum(dim=0)
            s3 = g * s.pow(3)
            w_centred = wg - wg.mean(dim=0)
            through_grad_x = (-r * d - u_centred * q - p * w_centred) / s3 + 3 * p * q * d / (g * s3 * s.square())
            through_grad_x = (a.reshape(1, m, f, 1, 1, 1) * through_grad_x).reshape(n, c, h, w).to(x.dtype)
            d_x = through_grad_x + ops.minibatch_std_double_backward(upstream, w_grad, x, group_size, num_channels)[1]
    return d_upstream, d_grad, d_x, None, None


def register():
    torch.library.register_fake("gan_kernels::minibatch_std", _fake_forward)
    torch.library.register_fake("gan_kernels::minibatch_std_backward", _fake_backward)
    torch.library.register_fake("gan_kernels::minibatch_std_double_backward", _fake_double_backward)
    torch.library.register_autograd(
        "gan_kernels::minibatch_std_backward", _backward_backward, setup_context=_setup_backward
    )
    torch.library.register_autograd(
        "gan_kernels::minibatch_std_double_backward", _double_backward_backward, setup_context=_setup_double_backward
    )
