"""Fused bias + activation + gain + clamp: StyleGAN's ``bias_act``, differentiable to any order.

Three dispatcher ops, with v = x * scale + b:
  bias_act        y = clamp(act(v) * gain, -clamp, clamp)
  bias_act_grad   dL/dv from dL/dy and the saved tensor (x, or y where its sign is enough)
  bias_act_grad2  d/dv of <upstream, bias_act_grad> for the smooth acts
Their autograd (each one's derivative, so any order works) is C++, in csrc/ops/bias_act.cpp; here:
the public function, and the fake kernels for torch.compile.
"""

import torch

from .. import _activations, _backend, _checks, reference

ACTIVATIONS = tuple(a.name for a in _activations.ACTIVATIONS)


def _activation(act):
    """``act``'s row of the activations table; a ValueError naming the choices for anything else."""
    row = _activations.BY_NAME.get(act) if isinstance(act, str) else None
    if row is None:
        raise ValueError(f"act must be one of {', '.join(ACTIVATIONS)}, got {act!r}")
    return row


def _check_args(x, b, dim, act, alpha, gain, clamp, scale):
    """The checks of csrc/ops/bias_act.cpp, with the same messages: for the reference and the fake
    kernels. Returns dim (wrapped; 0 without a bias, where, as in StyleGAN, it plays no part, so 1-d
    inputs work with the default dim=1), act and the numbers as floats."""
    _checks.check_floating(x, "x")
    _activation(act)
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
    _checks.same_device(b, x, "b", "x")
    _checks.same_dtype(b, x, "b", "x")
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
    row = _activation(act)  # its defaults fill alpha and gain on either path
    alpha = row.default_alpha if alpha is None else alpha
    gain = row.default_gain if gain is None else gain
    _checks.tensor(x, "x")
    if b is not None and not isinstance(b, torch.Tensor):
        raise TypeError(f"b must be a torch.Tensor or None, got {type(b).__name__}")
    if x.dim() == 0:  # the kernels index a dim; a 0-d tensor runs as one element
        if b is not None:
            raise IndexError("b needs x with at least one dimension, got a 0-dimensional x")
        return bias_act(x.reshape(1), None, 0, act, alpha, gain, clamp, scale).reshape(())
    if _backend.use_compiled(x.device, x, b):  # the op checks every argument (csrc/ops/bias_act.cpp)
        # numpy scalars (StyleGAN's gains are np.float32/np.float64) and 0-d tensors become the floats
        # the schema takes. Without a bias, dim plays no part (as in StyleGAN): 1-d inputs work with dim=1;
        # its type is checked all the same, as the reference's checks do.
        dim = _checks.int64(dim, "dim")
        dim = 0 if b is None else dim
        alpha, gain, scale = _checks.real(alpha, "alpha"), _checks.real(gain, "gain"), _checks.real(scale, "scale")
        clamp = None if clamp is None else _checks.real(clamp, "clamp")
        return torch.ops.gan_kernels.bias_act(x, b, dim, act, alpha, gain, clamp, scale)
    return reference.bias_act(x, b, *_check_args(x, b, dim, act, alpha, gain, clamp, scale))


def _gradient_from_output(act, alpha, gain, clamp):
    """csrc/ops/bias_act.cpp's gradient_from_output: whether the sign of y gives act'(v). Values known
    only when the graph runs pass, as in _checks (the op checks them then)."""
    if not _activations.BY_NAME[act].piecewise_linear or clamp is not None:
        return False
    return _checks.symbolic(alpha) or _checks.symbolic(gain) or (alpha >= 0 and gain != 0)


def _fake_forward(x, b, dim, act, alpha, gain, clamp, scale):
    _check_args(x, b, dim, act, alpha, gain, clamp, scale)
    return torch.empty_like(x)


def _fake_grad(grad, ref, b, dim, act, alpha, gain, clamp, scale, ref_is_y):
    ref_name = "y" if ref_is_y else "x"
    _checks.check_floating(ref, ref_name)
    _check_args(ref, b, dim, act, alpha, gain, clamp, scale)
    _checks.same(grad, ref, "grad", ref_name)
    if ref_is_y and not _gradient_from_output(act, alpha, gain, clamp):
        raise ValueError("ref_is_y needs act linear, relu or lrelu with alpha >= 0, gain != 0 and clamp None")
    return torch.empty_like(ref)


def _fake_grad2(upstream, grad, x, b, dim, act, alpha, gain, clamp, scale):
    _check_args(x, b, dim, act, alpha, gain, clamp, scale)
    _checks.same(upstream, x, "upstream", "x")
    _checks.same(grad, x, "grad", "x")
    return torch.empty_like(x)


def register():
    ops = torch.library
    ops.register_fake("gan_kernels::bias_act", _fake_forward)
    ops.register_fake("gan_kernels::bias_act_grad", _fake_grad)
    ops.register_fake("gan_kernels::bias_act_grad2", _fake_grad2)
