"""Pure-PyTorch formulas of every op: the spec, the fallback when no compiled kernel fits, and
the oracle the tests compare against. fp16/bf16 inputs are computed in float32 and returned in
their own dtype, as the kernels do."""
import torch

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _compute_dtype(x):
    return torch.float32 if x.dtype in _LOW_PRECISION else x.dtype


def pixel_norm(x, dim=1, eps=1e-8):
    """ProGAN's PixelNorm, StyleGAN's ``normalize_2nd_moment``: ``x * rsqrt(mean(x^2, dim) + eps)``."""
    xc = x.to(_compute_dtype(x))
    return (xc * (xc.square().mean(dim=dim, keepdim=True) + eps).rsqrt()).to(x.dtype)


# --- bias_act and the equalized-LR layers (StyleGAN's bias_act, FullyConnectedLayer, Conv2dLayer) ---

import math  # noqa: E402

# act: (function of (v, alpha), default alpha, default gain), as StyleGAN's bias_act.activation_funcs.
BIAS_ACT_ACTIVATIONS = {
    "linear": (lambda v, alpha: v, 0.0, 1.0),
    "relu": (lambda v, alpha: torch.nn.functional.relu(v), 0.0, math.sqrt(2)),
    "lrelu": (lambda v, alpha: torch.nn.functional.leaky_relu(v, alpha), 0.2, math.sqrt(2)),
    "tanh": (lambda v, alpha: torch.tanh(v), 0.0, 1.0),
    "sigmoid": (lambda v, alpha: torch.sigmoid(v), 0.0, 1.0),
    "elu": (lambda v, alpha: torch.nn.functional.elu(v), 0.0, 1.0),
    "selu": (lambda v, alpha: torch.nn.functional.selu(v), 0.0, 1.0),
    "softplus": (lambda v, alpha: torch.nn.functional.softplus(v), 0.0, 1.0),
    "swish": (lambda v, alpha: torch.sigmoid(v) * v, 0.0, math.sqrt(2)),
}


def bias_act_defaults(act, alpha=None, gain=None):
    """StyleGAN's defaults: alpha 0.2 for lrelu, gain sqrt(2) for relu, lrelu and swish, else 0 and 1."""
    _, default_alpha, default_gain = BIAS_ACT_ACTIVATIONS[act]
    return float(default_alpha if alpha is None else alpha), float(default_gain if gain is None else gain)


def bias_act(x, b=None, dim=1, act="linear", alpha=None, gain=None, clamp=None, scale=1.0):
    """StyleGAN's ``bias_act``: ``clamp(act(x * scale + b) * gain, -clamp, clamp)``, b broadcast along ``dim``."""
    func = BIAS_ACT_ACTIVATIONS[act][0]
    alpha, gain = bias_act_defaults(act, alpha, gain)
    v = x.to(_compute_dtype(x))
    if scale != 1:
        v = v * scale
    if b is not None:
        v = v + b.to(v.dtype).reshape([-1 if i == dim % x.ndim else 1 for i in range(x.ndim)])
    y = func(v, alpha)
    if gain != 1:
        y = y * gain
    if clamp is not None:
        y = y.clamp(-clamp, clamp)
    return y.to(x.dtype)


class EqualizedLinear(torch.nn.Module):
    """StyleGAN's ``FullyConnectedLayer``: weight stored as ``randn(out, in) / lr_multiplier`` and used
    as ``weight * lr_multiplier / sqrt(in)``; bias used as ``bias * lr_multiplier``."""

    _bias_act = staticmethod(bias_act)

    def __init__(self, in_features, out_features, bias=True, activation="linear", lr_multiplier=1, bias_init=0):
        super().__init__()
        if activation not in BIAS_ACT_ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(BIAS_ACT_ACTIVATIONS)}, got {activation!r}")
        self.in_features, self.out_features = in_features, out_features
        self.activation = activation
        self.weight = torch.nn.Parameter(torch.randn([out_features, in_features]) / lr_multiplier)
        self.bias = torch.nn.Parameter(torch.full([out_features], float(bias_init))) if bias else None
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x, gain=1):
        w = self.weight.to(x.dtype) * self.weight_gain
        b = self.bias
        if b is not None:
            b = b.to(x.dtype)
            if self.bias_gain != 1:
                b = b * self.bias_gain
        if self.activation == "linear" and b is not None and gain == 1:
            return torch.addmm(b.unsqueeze(0), x, w.t())
        act_gain = BIAS_ACT_ACTIVATIONS[self.activation][2] * gain
        return self._bias_act(x.matmul(w.t()), b, act=self.activation, gain=act_gain)

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, activation={self.activation}"


class EqualizedConv2d(torch.nn.Module):
    """StyleGAN's ``Conv2dLayer`` (without resampling): weight stored as ``randn / lr_multiplier`` and used
    as ``weight.to(x.dtype) * lr_multiplier / sqrt(in * k * k)``, padding ``k // 2``; ``forward(x, gain)``
    scales the activation gain and ``conv_clamp`` by ``gain``."""

    _bias_act = staticmethod(bias_act)

    def __init__(self, in_channels, out_channels, kernel_size, bias=True, activation="linear", lr_multiplier=1,
                 conv_clamp=None, stride=1, padding=None):
        super().__init__()
        if activation not in BIAS_ACT_ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(BIAS_ACT_ACTIVATIONS)}, got {activation!r}")
        if conv_clamp is not None and not conv_clamp >= 0:
            raise ValueError(f"conv_clamp must be a finite number >= 0, got {conv_clamp}")
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.activation = activation
        self.conv_clamp = conv_clamp
        self.stride = stride
        self.padding = kernel_size // 2 if padding is None else padding
        self.weight = torch.nn.Parameter(
            torch.randn([out_channels, in_channels, kernel_size, kernel_size]) / lr_multiplier
        )
        self.bias = torch.nn.Parameter(torch.zeros([out_channels])) if bias else None
        self.weight_gain = lr_multiplier / math.sqrt(in_channels * kernel_size**2)
        self.bias_gain = lr_multiplier
        self.act_gain = BIAS_ACT_ACTIVATIONS[activation][2]

    def forward(self, x, gain=1):
        w = self.weight.to(x.dtype) * self.weight_gain
        b = self.bias
        if b is not None:
            b = b.to(x.dtype)
            if self.bias_gain != 1:
                b = b * self.bias_gain
        x = torch.nn.functional.conv2d(x, w, stride=self.stride, padding=self.padding)
        act_clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return self._bias_act(x, b, act=self.activation, gain=self.act_gain * gain, clamp=act_clamp)

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"activation={self.activation}, stride={self.stride}, padding={self.padding}, "
                f"conv_clamp={self.conv_clamp}")
