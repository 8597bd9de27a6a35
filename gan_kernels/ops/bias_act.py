"""Fused bias + activation + gain + clamp: StyleGAN's ``bias_act``, differentiable to any order.

Three dispatcher ops, with v = x * scale + b:
  bias_act        y = clamp(act(v) * gain, -clamp, clamp)
  bias_act_grad   dL/dv from dL/dy and the saved tensor (x, or y where its sign is enough)
  bias_act_grad2  d/dv of <upstream, bias_act_grad> for the smooth acts
"""

import torch

from .. import _activations, _backend, _checks, reference

ACTIVATIONS = tuple(a.name for a in _activations.ACTIVATIONS)
# act'' = 0 wherever it exists: their gradient is linear in dL/dy and has no second-order term.
PIECEWISE_LINEAR = tuple(a.name for a in _activations.ACTIVATIONS if a.piecewise_linear)


def _check_activation(act):
    if act not in ACTIVATIONS:
        raise ValueError(f"act must be one of {', '.join(ACTIVATIONS)}, got {act!r}")


def _check_args(x, b, dim, act, alpha, gain, clamp, scale):
    """The checks of csrc/ops/bias_act.cpp, with the same messages: for the reference and the fake
    kernels. Returns dim (wrapped; 0 without a bias, where, as in StyleGAN, it plays no part, so 1-d
    inputs work with the default dim=1), act and the numbers as floats."""
    _checks.check_floating(x, "x")
    _check_activation(act)
    dim = _checks.integer(dim, "dim")
    alpha, gain, scale = (
        _checks.finite(value, arg) for value, arg in ((alpha, "alpha"), (gain, "gain"), (scale, "scale"))
    )
    if clamp is not None:
        clamp = _checks.nonnegative(clamp, "clamp")
    if b is None:
        return 0, act, alpha, gain, clamp, scale
    if x.dim() == 0:
        raise IndexError("b needs x with at least one dimension, got a 0-dimensional x")
    dim = _checks.wrap_dim(dim, x, "dim")
    if b.device != x.device:
        raise ValueError(f"b is on {b.device} but x is on {x.device}")
    if b.dtype != x.dtype:
        raise TypeError(f"b has dtype {b.dtype} but x has dtype {x.dtype}")
    if b.dim() != 1 or b.shape[0] != x.shape[dim]:
        raise ValueError(f"b must be a 1-D tensor of length x.shape[{dim}] = {x.shape[dim]}, got shape {list(b.shape)}")
    return dim, act, alpha, gain, clamp, scale


def bias_act(x, b=None, dim=1, act="linear", alpha=None, gain=None, clamp=None, scale=1.0):
    """StyleGAN's ``bias_act``: ``clamp(act(x * scale + b) * gain, -clamp, clamp)`` in one pass.

    ``b`` (1-D, length ``x.shape[dim]``) is broadcast along ``dim``. Defaults as StyleGAN: ``alpha``
    0.2 for lrelu; ``gain`` sqrt(2) for relu, lrelu and swish, else 1; ``clamp`` None (no clamp).
    ``scale`` multiplies x before the bias (a layer can fold its weight gain in here). Any floating
    dtype (fp16/bf16 compute in float32), any layout, differentiable to any order.
    """
    _check_activation(act)  # its defaults fill alpha and gain on either path
    alpha = reference.BIAS_ACT_ACTIVATIONS[act][1] if alpha is None else alpha
    gain = reference.BIAS_ACT_ACTIVATIONS[act][2] if gain is None else gain
    _checks.tensor(x, "x")
    if b is not None and not isinstance(b, torch.Tensor):
        raise TypeError(f"b must be a torch.Tensor or None, got {type(b).__name__}")
    if x.dim() == 0:  # the kernels index a dim; a 0-d tensor runs as one element
        if b is not None:
            raise IndexError("b needs x with at least one dimension, got a 0-dimensional x")
        return bias_act(x.reshape(1), None, 0, act, alpha, gain, clamp, scale).reshape(())
    if _backend.use_compiled(x.device, x, b):  # the op checks every argument (csrc/ops/bias_act.cpp)
        # numpy scalars (StyleGAN's gains are np.float32/np.float64) and 0-d tensors become the floats
        # the schema takes. Without a bias, dim plays no part (as in StyleGAN): 1-d inputs work with dim=1.
        dim = 0 if b is None else _checks.int64(dim, "dim")
        alpha, gain, scale = (
            _checks.real(value, arg) for value, arg in ((alpha, "alpha"), (gain, "gain"), (scale, "scale"))
        )
        clamp = None if clamp is None else _checks.real(clamp, "clamp")
        return torch.ops.gan_kernels.bias_act(x, b, dim, act, alpha, gain, clamp, scale)
    return reference.bias_act(x, b, *_check_args(x, b, dim, act, alpha, gain, clamp, scale))


def _reduce_to_bias(grad_v, dim):
    other_dims = [i for i in range(grad_v.dim()) if i != dim]
    return grad_v.sum(dim=other_dims) if other_dims else grad_v  # sum(dim=[]) would sum everything


def _to_x_and_b(ctx, grad_v, x_slot, b_slot):
    """dL/dv as the gradients of x (times scale) and of b (summed over every dim but dim)."""
    grad_x = grad_b = None
    if ctx.needs_input_grad[x_slot]:
        grad_x = grad_v * ctx.scale if ctx.scale != 1 else grad_v
    if ctx.needs_input_grad[b_slot]:
        grad_b = _reduce_to_bias(grad_v, ctx.dim % grad_v.dim())
    return grad_x, grad_b


def _save_scalars(ctx, dim, act, alpha, gain, clamp, scale):
    ctx.dim, ctx.act, ctx.alpha, ctx.gain, ctx.clamp, ctx.scale = dim, act, alpha, gain, clamp, scale


def _scalars(ctx):
    return ctx.dim, ctx.act, ctx.alpha, ctx.gain, ctx.clamp, ctx.scale


# --- bias_act_grad ---


def _setup_grad(ctx, inputs, output):
    grad, ref, b, dim, act, alpha, gain, clamp, scale, ref_is_y = inputs
    _save_scalars(ctx, dim, act, alpha, gain, clamp, scale)
    ctx.ref_is_y = ref_is_y
    ctx.save_for_backward(grad, ref, b)


def _grad_backward(ctx, upstream):
    grad, ref, b = ctx.saved_tensors
    dim, act, alpha, gain, clamp, scale = _scalars(ctx)
    d_grad = d_ref = d_b = None
    if ctx.needs_input_grad[0]:
        # bias_act_grad is linear in grad, with a diagonal Jacobian.
        d_grad = torch.ops.gan_kernels.bias_act_grad(
            upstream, ref, b, dim, act, alpha, gain, clamp, scale, ctx.ref_is_y
        )
    # Piecewise-linear acts (the only ones saving y) have no second-order term, so y and x get none.
    if act not in PIECEWISE_LINEAR and (ctx.needs_input_grad[1] or ctx.needs_input_grad[2]):
        d_v = torch.ops.gan_kernels.bias_act_grad2(upstream, grad, ref, b, dim, act, alpha, gain, clamp, scale)
        d_ref, d_b = _to_x_and_b(ctx, d_v, 1, 2)
    return d_grad, d_ref, d_b, None, None, None, None, None, None, None


# --- bias_act_grad2 ---


def _act_third_derivative(v, act):
    """act'''(v) for the smooth acts, in aten ops so that it is differentiable itself (any order)."""
    if act == "tanh":
        t = torch.tanh(v)
        return (1 - t.square()) * (6 * t.square() - 2)
    s = torch.sigmoid(v)
    ds = s * (1 - s)
    if act == "sigmoid":
        return ds * (1 - 6 * s + 6 * s.square())
    if act == "elu":
        return torch.where(v > 0, 0.0, torch.exp(v))
    if act == "selu":
        return torch.where(v > 0, 0.0, torch.exp(v) * (_activations.SELU_SCALE * _activations.SELU_ALPHA))
    if act == "softplus":
        return torch.where(v > _activations.SOFTPLUS_THRESHOLD, 0.0, ds * (1 - 2 * s))
    if act == "swish":
        return 3 * ds * (1 - 2 * s) + v * ds * (1 - 6 * s + 6 * s.square())
    raise AssertionError(act)


def _grad2_grad_v(w, upstream, grad, x, b, dim, act, alpha, gain, clamp, scale):
    """d/dv of <w, bias_act_grad2(upstream, grad, x, b)> = w * upstream * grad * gain * act'''(v) * mask."""
    compute = reference._compute_dtype(x)
    v = x.to(compute) * scale
    if b is not None:
        v = v + b.to(compute).reshape([-1 if i == dim % x.dim() else 1 for i in range(x.dim())])
    d_v = w.to(compute) * upstream.to(compute) * grad.to(compute) * (gain * _act_third_derivative(v, act))
    if clamp is not None:
        pre_clamp = reference.BIAS_ACT_ACTIVATIONS[act][0](v, alpha) * gain
        d_v = torch.where((pre_clamp >= -clamp) & (pre_clamp <= clamp), d_v, 0.0)
    return d_v.to(x.dtype)


def _setup_grad2(ctx, inputs, output):
    upstream, grad, x, b, dim, act, alpha, gain, clamp, scale = inputs
    _save_scalars(ctx, dim, act, alpha, gain, clamp, scale)
    ctx.save_for_backward(upstream, grad, x, b)


def _grad2_backward(ctx, w):
    upstream, grad, x, b = ctx.saved_tensors
    scalars = _scalars(ctx)
    d_upstream = d_grad = d_x = d_b = None
    # grad2 is upstream * grad * (a function of v): linear in each of the two, so each one's
    # gradient is grad2 with the other.
    if ctx.needs_input_grad[0]:
        d_upstream = torch.ops.gan_kernels.bias_act_grad2(w, grad, x, b, *scalars)
    if ctx.needs_input_grad[1]:
        d_grad = torch.ops.gan_kernels.bias_act_grad2(w, upstream, x, b, *scalars)
    if ctx.act not in PIECEWISE_LINEAR and (ctx.needs_input_grad[2] or ctx.needs_input_grad[3]):
        d_x, d_b = _to_x_and_b(ctx, _grad2_grad_v(w, upstream, grad, x, b, *scalars), 2, 3)
    return d_upstream, d_grad, d_x, d_b, None, None, None, None, None, None


def _fake_forward(x, b, dim, act, alpha, gain, clamp, scale):
    _check_args(x, b, dim, act, alpha, gain, clamp, scale)
    return torch.empty_like(x)


def _fake_grad(grad, ref, b, dim, act, alpha, gain, clamp, scale, ref_is_y):
    _check_args(ref, b, dim, act, alpha, gain, clamp, scale)
    return torch.empty_like(ref)


def _fake_grad2(upstream, grad, x, b, dim, act, alpha, gain, clamp, scale):
    _check_args(x, b, dim, act, alpha, gain, clamp, scale)
    return torch.empty_like(x)


def register():
    ops = torch.library
    ops.register_fake("gan_kernels::bias_act", _fake_forward)
    ops.register_fake("gan_kernels::bias_act_grad", _fake_grad)
    ops.register_fake("gan_kernels::bias_act_grad2", _fake_grad2)
    ops.register_autograd("gan_kernels::bias_act_grad", _grad_backward, setup_context=_setup_grad)
    ops.register_autograd("gan_kernels::bias_act_grad2", _grad2_backward, setup_context=_setup_grad2)
