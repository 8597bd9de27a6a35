"""Equalized learning-rate layers (ProGAN, StyleGAN) whose bias + activation + gain + clamp epilogue
is one fused gan_kernels.bias_act pass. Parameter names, initialisation and numerics are those of
StyleGAN's FullyConnectedLayer and Conv2dLayer, so their state dicts load unchanged.

The runtime weight gain is applied to the (small) weight, as StyleGAN does, rather than folded into
bias_act's ``scale``: scaling the weight costs less than nothing on the activations and keeps the
results bit-compatible with StyleGAN's layers."""
from .. import reference
from ..ops.bias_act import bias_act


class EqualizedLinear(reference.EqualizedLinear):
    """StyleGAN's ``FullyConnectedLayer(in, out, bias, activation, lr_multiplier, bias_init)``."""

    _bias_act = staticmethod(bias_act)


class EqualizedConv2d(reference.EqualizedConv2d):
    """StyleGAN's ``Conv2dLayer(in, out, kernel_size, bias, activation, conv_clamp)`` without
    resampling, plus ``lr_multiplier``, ``stride`` and ``padding`` (default ``kernel_size // 2``)."""

    _bias_act = staticmethod(bias_act)
