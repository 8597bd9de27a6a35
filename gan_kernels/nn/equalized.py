"""Equalized learning-rate layers (ProGAN, StyleGAN) whose bias + activation + gain + clamp epilogue
is one fused gan_kernels.bias_act pass. Parameter names, initialisation and numerics are those of
StyleGAN's FullyConnectedLayer and Conv2dLayer, so their state dicts load unchanged.

The runtime weight gain is applied to the (small) weight, as StyleGAN does, rather than folded into
bias_act's ``scale``: scaling the weight costs less than nothing on the activations and keeps the
results bit-compatible with StyleGAN's layers.

Without the compiled extension, or with GAN_KERNELS_IMPL=reference, the same layers run
``gan_kernels.reference.bias_act``: the op picks its implementation, the layer does not."""

import math

import torch

from .. import _activations, _checks, reference
from ..ops.bias_act import bias_act


def _check_activation(activation):
    if activation not in reference.BIAS_ACT_ACTIVATIONS:
        raise ValueError(f"activation must be one of {', '.join(reference.BIAS_ACT_ACTIVATIONS)}, got {activation!r}")


def _default_gain(activation):
    return _activations.BY_NAME[activation].default_gain


def _cast(t, dtype):
    """``t.to(dtype)``, without the call where that returns ``t`` itself: a dispatcher round trip is
    a good part of a small layer's time."""
    return t if t.dtype == dtype else t.to(dtype)


class _EqualizedLayer(torch.nn.Module):
    """Runtime parameters of StyleGAN's equalized-LR layers: the weight cast to the activations' dtype
    (so fp16 activations work) times its gain (FullyConnectedLayer's order; the conv overrides it),
    the bias times ``bias_gain``."""

    # The epilogue, a function with bias_act's signature. A class attribute so that the tests and
    # benchmarks can build plain-PyTorch twins of these layers (reference.bias_act) to compare with.
    _bias_act = staticmethod(bias_act)

    def reset_parameters(self):
        """``weight = randn / lr_multiplier`` (the same draws as StyleGAN's), ``bias = bias_init``; as
        torch's layers, for a layer built on the meta device and then given memory (``to_empty``)."""
        with torch.no_grad():
            self.weight.normal_().div_(self.bias_gain)  # bias_gain is lr_multiplier
            if self.bias is not None:
                self.bias.fill_(self.bias_init)

    def _runtime_weight(self, x):
        return _cast(self.weight, x.dtype) * self.weight_gain

    def _runtime_bias(self, b, dtype):
        """``b``, ``self.bias`` (read once by the caller: each read of a parameter is a Python call), in
        the dtype of the matmul or conv output, which autocast may have lowered."""
        if b is not None:
            b = _cast(b, dtype)
            if self.bias_gain != 1:
                b = b * self.bias_gain
        return b


class EqualizedLinear(_EqualizedLayer):
    """StyleGAN's ``FullyConnectedLayer(in, out, bias, activation, lr_multiplier, bias_init)``: weight
    stored as ``randn(out, in) / lr_multiplier`` and used as ``weight * lr_multiplier / sqrt(in)``;
    bias used as ``bias * lr_multiplier``."""

    def __init__(self, in_features, out_features, bias=True, activation="linear", lr_multiplier=1, bias_init=0):
        super().__init__()
        _check_activation(activation)
        # in_features >= 1: the runtime gain is 1/sqrt(in_features).
        in_features, out_features = (
            _checks.count(in_features, "in_features"),
            _checks.count(out_features, "out_features", 0),
        )
        lr_multiplier = _checks.positive(lr_multiplier, "lr_multiplier")
        # Finite: a NaN or infinite bias_init made every output NaN or infinite from the first forward.
        bias_init = _checks.finite(bias_init, "bias_init")
        self.in_features, self.out_features = in_features, out_features
        self.activation = activation
        self.bias_init = bias_init
        self.weight = torch.nn.Parameter(torch.empty([out_features, in_features]))
        self.bias = torch.nn.Parameter(torch.empty([out_features])) if bias else None
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier
        self.reset_parameters()

    def forward(self, x, gain=1):
        """``x`` [*, in_features] -> [*, out_features], as torch.nn.Linear: the bias goes along the
        last dim (StyleGAN's layer takes [N, in] only, where that is dim 1)."""
        _checks.tensor(x, "x")
        # Before any arithmetic with it: a gain of another type failed there, naming neither the
        # argument nor its value ("can't multiply sequence by non-int of type 'float'").
        gain = _checks.finite(gain, "gain")
        w = self._runtime_weight(x)
        bias = self.bias
        if self.activation == "linear" and bias is not None and gain == 1:
            if x.dim() != 2:  # addmm takes matrices only
                return torch.nn.functional.linear(x, w, self._runtime_bias(bias, x.dtype))
            return torch.addmm(self._runtime_bias(bias, x.dtype).unsqueeze(0), x, w.t())
        act_gain = _default_gain(self.activation) * gain
        x = x.matmul(w.t())
        return self._bias_act(x, self._runtime_bias(bias, x.dtype), dim=-1, act=self.activation, gain=act_gain)

    def extra_repr(self):
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"activation={self.activation}, lr_multiplier={self.bias_gain}"
        )


class EqualizedConv2d(_EqualizedLayer):
    """StyleGAN's ``Conv2dLayer(in, out, kernel_size, bias, activation, conv_clamp)`` without
    resampling, plus ``lr_multiplier``, ``stride`` and ``padding`` (default ``kernel_size // 2``):
    weight stored as ``randn / lr_multiplier`` and used as
    ``(weight * lr_multiplier / sqrt(in * k * k)).to(x.dtype)``; ``forward(x, gain)`` scales the
    activation gain and ``conv_clamp`` by ``gain``."""

    def __init__(
        self,
        in_channels,
        out_channels,
        kernel_size,
        bias=True,
        activation="linear",
        lr_multiplier=1,
        conv_clamp=None,
        stride=1,
        padding=None,
    ):
        super().__init__()
        _check_activation(activation)
        in_channels, out_channels = (
            _checks.count(in_channels, "in_channels"),
            _checks.count(out_channels, "out_channels", 0),
        )
        kernel_size = _checks.count(kernel_size, "kernel_size")
        lr_multiplier = _checks.positive(lr_multiplier, "lr_multiplier")
        if conv_clamp is not None:
            conv_clamp = _checks.nonnegative(conv_clamp, "conv_clamp")
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.activation = activation
        self.conv_clamp = conv_clamp
        # Checked here, as torch.nn.Conv2d does: conv2d's own errors come only at the first forward, and
        # name neither the layer nor the argument (or, for a bool, none at all).
        stride = _checks.int_pair(stride, "stride", 1)
        if padding is None:
            padding = kernel_size // 2
        elif isinstance(padding, str):
            # forward hands padding to conv2d, which also takes these two.
            if padding not in ("same", "valid"):
                raise ValueError(f"padding must be an int, a pair of ints, 'same' or 'valid', got {padding!r}")
            if padding == "same" and stride not in (1, (1, 1)):
                raise ValueError(f"padding='same' needs stride 1, got stride={stride!r}")
        else:
            padding = _checks.int_pair(padding, "padding", 0)
        self.stride, self.padding = stride, padding
        self.weight = torch.nn.Parameter(torch.empty([out_channels, in_channels, kernel_size, kernel_size]))
        self.bias = torch.nn.Parameter(torch.empty([out_channels])) if bias else None
        self.bias_init = 0.0  # StyleGAN's Conv2dLayer starts its bias at 0
        self.weight_gain = lr_multiplier / math.sqrt(in_channels * kernel_size**2)
        self.bias_gain = lr_multiplier
        self.act_gain = _default_gain(activation)
        self.reset_parameters()

    def _runtime_weight(self, x):
        # StyleGAN's Conv2dLayer scales in the weight's dtype and then casts (``(w * gain).to(x.dtype)``),
        # unlike its FullyConnectedLayer: casting first rounds twice for fp16/bf16 activations and
        # scales in float64 for float64 ones, neither of which gives StyleGAN's numbers.
        return _cast(self.weight * self.weight_gain, x.dtype)

    def forward(self, x, gain=1):
        _checks.tensor(x, "x")
        # Before the clamp's sign test and any arithmetic: a gain of another type failed there, naming
        # neither the argument nor its value ("'<' not supported between instances of 'str' and 'int'").
        gain = _checks.finite(gain, "gain")
        if x.dim() == 3:  # unbatched [C, H, W], as conv2d takes it: the bias goes along C, not H
            return self.forward(x.unsqueeze(0), gain).squeeze(0)
        x = torch.nn.functional.conv2d(x, self._runtime_weight(x), stride=self.stride, padding=self.padding)
        act_clamp = None
        if self.conv_clamp is not None:
            # The clamp bound is conv_clamp * gain: a negative gain would fail as a "clamp" the caller
            # never passed.
            if gain < 0:
                raise ValueError(f"gain must be >= 0 for a layer with conv_clamp={self.conv_clamp}, got {gain}")
            act_clamp = self.conv_clamp * gain
        return self._bias_act(
            x, self._runtime_bias(self.bias, x.dtype), act=self.activation, gain=self.act_gain * gain, clamp=act_clamp
        )

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # StyleGAN2-ADA's Conv2dLayer always saves its resample_filter buffer, which a layer without
        # up/downsampling never reads: accept it, so such checkpoints load with strict=True.
        state_dict.pop(prefix + "resample_filter", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self):
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, bias={self.bias is not None}, "
            f"activation={self.activation}, lr_multiplier={self.bias_gain}, stride={self.stride}, "
            f"padding={self.padding}, conv_clamp={self.conv_clamp}"
        )
