"""Minibatch standard deviation: StyleGAN2's ``MinibatchStdLayer`` (ProGAN/StyleGAN discriminator epilogue)."""
import torch

from .. import _backend, _checks, reference

EPS = 1e-8  # StyleGAN2's, inside the sqrt; not a parameter of the layer


def _check_count(value, arg):
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{arg} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{arg} must be >= 1, got {value}")


def _check_args(x, group_size, num_channels):
    """The checks of csrc/ops/minibatch_std.cpp, with the same messages."""
    _checks.check_floating(x, "x")
    if x.dim() != 4:
        raise ValueError(f"x must be a 4-D tensor [N, C, H, W], got shape {list(x.shape)}")
    _check_count(group_size, "group_size")
    _check_count(num_channels, "num_channels")
    n, c = x.shape[0], x.shape[1]
    if not (c > 0 and c % num_channels == 0):
        raise ValueError(
            f"the number of channels C={c} of x is not a positive multiple of num_channels F={num_channels}; "
            "use a num_channels that divides C"
        )
    g = min(group_size, n)
    if n != 0 and n % g != 0:
        raise ValueError(
            f"batch size N={n} is not divisible by group size G={g}; "
            f"use a batch size that is a multiple of {g} or a group_size that divides {n}"
        )


def minibatch_std(x, group_size=4, num_channels=1):
    """StyleGAN2's minibatch standard deviation: ``[N, C, H, W] -> [N, C + num_channels, H, W]``.

    Samples are grouped as StyleGAN2 does: G = min(group_size, N) (``group_size=None``: the whole
    batch), sample n in group n % (N/G). Channel C + f holds, for the sample's group, the mean over
    feature f's C/F channels and all pixels of sqrt(biased group variance + 1e-8). Statistics in
    float32 for fp16/bf16 (float64 for float64); the output has x's dtype. channels_last inputs
    give channels_last outputs, any other layout a contiguous one. Differentiable to any order.
    """
    if group_size is None and isinstance(x, torch.Tensor) and x.dim() == 4:
        group_size = max(x.shape[0], 1)
    _check_args(x, group_size, num_channels)
    if _backend.use_compiled(x.device):
        return torch.ops.gan_kernels.minibatch_std(x, group_size, num_channels)
    return reference.minibatch_std(x, group_size, num_channels)


def _output_format(x):
    """Memory format of the ops' outputs: must agree with output_format in csrc/ops/minibatch_std.cpp."""
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def _fake_forward(x, group_size, num_channels):
    _check_args(x, group_size, num_channels)
    n, c, h, w = x.shape
    return torch.empty(
        (n, c + num_channels, h, w), dtype=x.dtype, device=x.device, memory_format=_output_format(x)
    )


def _fake_backward(grad, x, group_size, num_channels):
    _check_args(x, group_size, num_channels)
    return torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=_output_format(x))


def _setup_forward(ctx, inputs, output):
    x, group_size, num_channels = inputs
    ctx.save_for_backward(x)
    ctx.group_size, ctx.num_channels = group_size, num_channels


def _forward_backward(ctx, grad):
    (x,) = ctx.saved_tensors
    return torch.ops.gan_kernels.minibatch_std_backward(grad, x, ctx.group_size, ctx.num_channels), None, None


def _setup_backward(ctx, inputs, output):
    grad, x, group_size, num_channels = inputs
    ctx.save_for_backward(grad, x)
    ctx.group_size, ctx.num_channels = group_size, num_channels


def _backward_backward(ctx, upstream):
    """Gradients of <upstream, dx> with dx = backward(grad, x), in differentiable aten ops.

    Per group position (G members, d = x - mean, s = sqrt(mean(d^2) + eps)) and feature block of
    K = C/F*H*W positions: dx = grad[:, :C] + a d / s with a = sum(grad[:, C:]) / (K G). So, with
    v = a * upstream: d/dgrad is [upstream, sum(upstream d / s) / (K G) broadcast over the stddev
    channel] and d/dx = (v - mean(v)) / s - sum(v d) d / (G s^3).
    """
    grad, x = ctx.saved_tensors
    want_grad, want_x = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    n, c, h, w = x.shape
    f = ctx.num_channels
    if x.numel() == 0:
        return (torch.zeros_like(grad) if want_grad else None), (torch.zeros_like(x) if want_x else None), None, None
    g = min(ctx.group_size, n)
    m, k = n // g, (c // f) * h * w
    compute = reference._compute_dtype(x)

    def grouped(t):
        return t.to(compute).reshape(g, m, f, c // f, h, w)

    xg = grouped(x)
    d = xg - xg.mean(dim=0)
    s = (d.square().mean(dim=0) + EPS).sqrt()
    ug = grouped(upstream)
    grad_grad = grad_x = None
    if want_grad:
        stat_grad = ((ug * d).sum(dim=0) / s).sum(dim=[2, 3, 4]) / (k * g)  # [M, F]
        stat_grad = stat_grad.reshape(1, m, f, 1, 1).expand(g, m, f, h, w).reshape(n, f, h, w)
        grad_grad = torch.cat([upstream.to(compute), stat_grad], dim=1).to(grad.dtype)
    if want_x:
        a = grad[:, c:].to(compute).reshape(g, m, f, h, w).sum(dim=[0, 3, 4]) / (k * g)  # [M, F]
        v = ug * a.reshape(1, m, f, 1, 1, 1)
        grad_x = (v - v.mean(dim=0)) / s - (v * d).sum(dim=0) * d / (g * s.pow(3))
        grad_x = grad_x.reshape(n, c, h, w).to(x.dtype)
    return grad_grad, grad_x, None, None


def register():
    torch.library.register_fake("gan_kernels::minibatch_std", _fake_forward)
    torch.library.register_fake("gan_kernels::minibatch_std_backward", _fake_backward)
    torch.library.register_autograd("gan_kernels::minibatch_std", _forward_backward, setup_context=_setup_forward)
    torch.library.register_autograd(
        "gan_kernels::minibatch_std_backward", _backward_backward, setup_context=_setup_backward
    )
