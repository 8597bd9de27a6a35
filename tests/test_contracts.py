"""Contracts every public op keeps, driven by one table of ops and sample inputs: forward-mode AD,
torch.compile with dynamic shapes, and scalar arguments in every form PyTorch accepts."""
import numpy as np
import pytest
import torch
from helpers import DEVICES

import gan_kernels
from gan_kernels import reference


# name: (op, its reference, sample inputs on a device): each op applied to float64 inputs.
OPS = {
    "pixel_norm": (lambda x: gan_kernels.pixel_norm(x), lambda x: reference.pixel_norm(x),
                   lambda d: [torch.randn(3, 5, 2, 2, dtype=torch.float64, device=d)]),
    "bias_act": (lambda x, b: gan_kernels.bias_act(x, b, act="elu", clamp=1.5),
                 lambda x, b: reference.bias_act(x, b, act="elu", clamp=1.5),
                 lambda d: [torch.randn(3, 5, 2, 2, dtype=torch.float64, device=d),
                            torch.randn(5, dtype=torch.float64, device=d)]),
    "minibatch_std": (lambda x: gan_kernels.minibatch_std(x, 2), lambda x: reference.minibatch_std(x, 2),
                      lambda d: [torch.randn(4, 6, 2, 3, dtype=torch.float64, device=d)]),
    "minibatch_discrimination": (gan_kernels.minibatch_discrimination, reference.minibatch_discrimination,
                                 lambda d: [torch.randn(5, 3, 4, dtype=torch.float64, device=d) / 4]),
    "per_sample_penalty": (lambda g: gan_kernels.per_sample_penalty(g, 1.0),
                           lambda g: reference.per_sample_penalty(g, 1.0),
                           lambda d: [torch.randn(3, 4, 2, dtype=torch.float64, device=d)]),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(OPS))
def test_forward_mode_ad_gives_the_true_tangent(device, name):
    op, ref, sample = OPS[name]
    torch.manual_seed(1)
    inputs = sample(device)
    tangents = [torch.randn_like(t) for t in inputs]
    _, tangent = torch.func.jvp(op, tuple(inputs), tuple(tangents))
    _, want = torch.func.jvp(ref, tuple(inputs), tuple(tangents))
    torch.testing.assert_close(tangent, want)
    assert tangent.abs().sum() > 0
    # The other forward-mode entry point: torch.autograd.forward_ad's dual tensors.
    import torch.autograd.forward_ad as fwAD

    with fwAD.dual_level():
        out = op(*[fwAD.make_dual(t, dt) for t, dt in zip(inputs, tangents)])
        torch.testing.assert_close(fwAD.unpack_dual(out).tangent, want)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(OPS))
def test_forward_over_reverse(device, name):
    # A Hessian-vector product by forward-over-reverse, as torch.func.hessian computes it.
    op, ref, sample = OPS[name]
    torch.manual_seed(2)
    x = sample(device)[0]
    rest = sample(device)[1:]

    def loss(f):
        return lambda t: f(t, *rest).square().sum()

    v = torch.randn_like(x)
    _, hvp = torch.func.jvp(torch.func.grad(loss(op)), (x,), (v,))
    _, want = torch.func.jvp(torch.func.grad(loss(ref)), (x,), (v,))
    torch.testing.assert_close(hvp, want)


@pytest.mark.parametrize("device", DEVICES)
def test_forward_mode_ad_through_spectral_norm(device):
    torch.manual_seed(3)
    weights = [torch.randn(4, 3, 2, dtype=torch.float64, device=device),
               torch.randn(5, 6, dtype=torch.float64, device=device)]
    us = [torch.nn.functional.normalize(torch.randn(w.shape[0], dtype=w.dtype, device=device), dim=0)
          for w in weights]
    vs = [torch.nn.functional.normalize(torch.randn(w[0].numel(), dtype=w.dtype, device=device), dim=0)
          for w in weights]
    sigmas = torch.stack([torch.vdot(u, reference.spectral_weight_matrix(w, 0) @ v)
                          for w, u, v in zip(weights, us, vs)])
    tangents = tuple(torch.randn_like(w) for w in weights)

    def ours(*w):
        return tuple(gan_kernels.spectral_norm_normalize(list(w), us, vs, sigmas, [0, 0]))

    def theirs(*w):
        return tuple(reference.spectral_norm_normalize(list(w), us, vs, [0, 0]))

    _, got = torch.func.jvp(ours, tuple(weights), tangents)
    _, want = torch.func.jvp(theirs, tuple(weights), tangents)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)
        assert g.abs().sum() > 0


@pytest.mark.parametrize("device", DEVICES)
def test_compile_with_dynamic_shapes(device):
    # Symbolic scalars reach the argument checks under dynamic=True: they must trace, not fail.
    model = torch.nn.Sequential(gan_kernels.nn.EqualizedConv2d(4, 6, 3, activation="lrelu", conv_clamp=256.0),
                                gan_kernels.nn.PixelNorm(), gan_kernels.nn.MinibatchStd(2)).to(device)

    def step(x, eps, clamp):
        y = model(x)
        return gan_kernels.bias_act(gan_kernels.pixel_norm(y, 1, eps), act="lrelu", clamp=clamp)

    compiled = torch.compile(step, fullgraph=True, dynamic=True)
    for n, h, eps, clamp in ((4, 5, 1e-8, 2.0), (6, 7, 1e-6, 3.0)):
        x = torch.randn(n, 4, h, h, device=device)
        torch.testing.assert_close(compiled(x, eps, clamp), step(x, eps, clamp), rtol=1e-5, atol=1e-5)


SCALAR_FORMS = [1.5, np.float32(1.5), np.float64(1.5), torch.tensor(1.5), torch.tensor(1.5, dtype=torch.float64)]


@pytest.mark.parametrize("value", SCALAR_FORMS, ids=lambda v: type(v).__name__ + str(getattr(v, "dtype", "")))
def test_every_scalar_argument_takes_numpy_scalars_and_0d_tensors(value):
    x = torch.randn(4, 3, 2, 2)
    torch.testing.assert_close(gan_kernels.pixel_norm(x, eps=value), gan_kernels.pixel_norm(x, eps=1.5))
    for arg in ("alpha", "gain", "clamp", "scale"):
        torch.testing.assert_close(gan_kernels.bias_act(x, act="lrelu", **{arg: value}),
                                   gan_kernels.bias_act(x, act="lrelu", **{arg: 1.5}))
    torch.testing.assert_close(gan_kernels.per_sample_penalty(x, value), gan_kernels.per_sample_penalty(x, 1.5))
    layer = gan_kernels.nn.EqualizedConv2d(3, 2, 1, conv_clamp=value, lr_multiplier=value)
    assert layer.conv_clamp == 1.5 and layer.bias_gain == 1.5
    assert gan_kernels.nn.PixelNorm(eps=value).eps == 1.5

    def D(t):
        return t.square().sum(dim=[1, 2, 3])

    for penalty in (lambda: gan_kernels.penalties.r1(D, x, value), lambda: gan_kernels.penalties.r2(D, x, value),
                    lambda: gan_kernels.penalties.wgan_gp(D, x, x.flip(0), value),
                    lambda: gan_kernels.penalties.dragan(D, x, value, perturbation=value),
                    lambda: gan_kernels.penalties.zero_centered_gp(D, x, x.flip(0), value),
                    lambda: gan_kernels.gradient_penalty(D(x.requires_grad_()), x, center=value)):
        assert penalty().isfinite().all()


@pytest.mark.parametrize("value", [4, np.int64(4), np.int32(4), torch.tensor(4)], ids=lambda v: type(v).__name__)
def test_every_count_argument_takes_numpy_ints_and_0d_tensors(value):
    x = torch.randn(8, 6, 2, 2)
    torch.testing.assert_close(gan_kernels.minibatch_std(x, value, 2), gan_kernels.minibatch_std(x, 4, 2))
    torch.testing.assert_close(gan_kernels.minibatch_std(x, 2, value // 2), gan_kernels.minibatch_std(x, 2, 2))
    assert gan_kernels.nn.MinibatchStd(value).group_size == 4
    assert gan_kernels.penalties.LazyRegularizer(value).interval == 4
    assert gan_kernels.penalties.lazy_adam_hyperparameters(0.1, (0.0, 0.99), value)[0] == pytest.approx(0.08)
    assert gan_kernels.nn.EqualizedLinear(value, value).weight.shape == (4, 4)


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: gan_kernels.pixel_norm(torch.randn(2, 3), dim=1.0), TypeError, "dim must be an int, got float"),
        (lambda: gan_kernels.bias_act(torch.randn(2, 3), torch.randn(3), dim=1.5), TypeError,
         "dim must be an int, got float"),
        (lambda: gan_kernels.minibatch_std(torch.randn(4, 2, 1, 1), 2**63), ValueError,
         r"group_size=9223372036854775808 is too large"),
        (lambda: gan_kernels.minibatch_std(torch.randn(4, 2, 1, 1), 2.0), TypeError, "group_size must be an int, got float"),
        (lambda: gan_kernels.minibatch_std(torch.randn(4, 2, 1, 1), True), TypeError, "group_size must be an int, got bool"),
        (lambda: gan_kernels.nn.EqualizedLinear(0, 5), ValueError, "in_features must be >= 1, got 0"),
        (lambda: gan_kernels.nn.EqualizedConv2d(0, 5, 3), ValueError, "in_channels must be >= 1, got 0"),
        (lambda: gan_kernels.nn.EqualizedConv2d(2, 5, 0), ValueError, "kernel_size must be >= 1, got 0"),
        (lambda: gan_kernels.nn.EqualizedLinear(2, 5, lr_multiplier=0), ValueError,
         "lr_multiplier must be a finite number > 0, got 0.0"),
        (lambda: gan_kernels.nn.EqualizedConv2d(2, 5, 3, conv_clamp=float("inf")), ValueError,
         "conv_clamp must be a finite number >= 0, got inf"),
        (lambda: gan_kernels.per_sample_penalty(torch.randn(2, 3), torch.ones(2)), TypeError,
         r"center must be a real number or a 0-d real tensor, got a tensor of shape \[2\]"),
        (lambda: gan_kernels.per_sample_penalty(torch.randn(2, 3), "1"), TypeError, "center must be a real number, got str"),
        (lambda: gan_kernels.penalties.LazyRegularizer(0), ValueError, "interval must be >= 1, got 0"),
    ],
)
def test_unusual_arguments_get_a_clear_error(call, error, match):
    with pytest.raises(error, match=match):
        call()


@pytest.mark.parametrize("device", DEVICES)
def test_0d_and_1d_inputs_work_where_the_formula_does(device):
    x0 = torch.tensor(-0.7, dtype=torch.float64, device=device, requires_grad=True)
    x1 = torch.randn(5, dtype=torch.float64, device=device, requires_grad=True)
    for x in (x0, x1):
        torch.testing.assert_close(gan_kernels.bias_act(x, act="lrelu"), reference.bias_act(x, act="lrelu"))
        torch.testing.assert_close(gan_kernels.pixel_norm(x, dim=0), reference.pixel_norm(x, dim=0))
        assert torch.autograd.gradcheck(lambda t: gan_kernels.bias_act(t, act="tanh", clamp=0.5), (x,))
        assert torch.autograd.gradcheck(lambda t: gan_kernels.pixel_norm(t, dim=-1), (x,))
    b = torch.randn(5, dtype=torch.float64, device=device)
    torch.testing.assert_close(gan_kernels.bias_act(x1, b, dim=0, act="tanh"), reference.bias_act(x1, b, dim=0, act="tanh"))
    with pytest.raises(IndexError, match="b needs x with at least one dimension"):
        gan_kernels.bias_act(x0, torch.randn(1, dtype=torch.float64, device=device))
