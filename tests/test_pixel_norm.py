import pytest
import torch
from helpers import (
    DEVICES,
    FLOAT_DTYPES,
    LAYOUTS,
    OPS_REGISTERED,
    assert_close,
    assert_compiled_matches_eager,
    assert_same_penalty_and_grads,
    make_4d,
    requires_ops,
)
from hypothesis import given, settings
from hypothesis import strategies as st

import gan_kernels
from gan_kernels import _backend, reference

pixel_norm_op = torch.ops.gan_kernels.pixel_norm.default if OPS_REGISTERED else None
pixel_norm_backward_op = torch.ops.gan_kernels.pixel_norm_backward.default if OPS_REGISTERED else None


def grads(fn, x, dim, grad_out):
    x = x.detach().requires_grad_()
    y = fn(x, dim)
    (gx,) = torch.autograd.grad(y, x, grad_out)
    return y, gx


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dim", [1, -1, 0])
def test_forward_and_backward_match_reference(device, dtype, layout, dim):
    torch.manual_seed(0)
    x = make_4d((4, 12, 5, 6), layout, dtype, device)
    grad_out = torch.randn(x.shape, dtype=dtype, device=device)
    y, gx = grads(gan_kernels.pixel_norm, x, dim, grad_out)
    y_ref, gx_ref = grads(reference.pixel_norm, x, dim, grad_out)
    assert y.dtype == dtype and gx.dtype == dtype
    assert_close(y, y_ref)
    assert_close(gx, gx_ref)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_output_keeps_the_memory_format(device, layout):
    x = make_4d((2, 8, 3, 3), layout, torch.float32, device)
    assert gan_kernels.pixel_norm(x).stride() == x.stride()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_accumulates_in_float(device, dtype):
    # Squares of 300 overflow fp16 (max 65504); a float accumulator does not.
    x = (torch.randn(2, 64, 4, 4, device=device) * 300).to(dtype)
    y = gan_kernels.pixel_norm(x)
    assert torch.isfinite(y).all()
    expected = reference.pixel_norm(x.double()).to(dtype)
    assert_close(y, expected, dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dim", [1, 3])
def test_gradcheck_and_gradgradcheck(device, layout, dim):
    torch.manual_seed(1)
    x = make_4d((3, 5, 4, 3), layout, torch.float64, device).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: gan_kernels.pixel_norm(t, dim), (x,))
    assert torch.autograd.gradgradcheck(lambda t: gan_kernels.pixel_norm(t, dim), (x,))


@requires_ops
@pytest.mark.parametrize("device", DEVICES)
def test_gradgradcheck_of_the_backward_op(device):
    torch.manual_seed(2)
    x = torch.randn(3, 5, 2, 2, dtype=torch.float64, device=device, requires_grad=True)
    g = torch.randn(3, 5, 2, 2, dtype=torch.float64, device=device, requires_grad=True)

    def backward_op(grad, inp):
        return pixel_norm_backward_op(grad, inp, 1, 1e-8)

    assert torch.autograd.gradcheck(backward_op, (g, x))
    assert torch.autograd.gradgradcheck(backward_op, (g, x))


@pytest.mark.parametrize("device", DEVICES)
def test_third_derivative_matches_reference(device):
    torch.manual_seed(3)
    x0 = torch.randn(2, 6, 3, 3, dtype=torch.float64, device=device)
    w1, w2, w3 = (torch.randn_like(x0) for _ in range(3))

    def third(fn):
        x = x0.clone().requires_grad_()
        (g1,) = torch.autograd.grad((fn(x) * w1).sum(), x, create_graph=True)
        (g2,) = torch.autograd.grad((g1 * w2).sum(), x, create_graph=True)
        (g3,) = torch.autograd.grad((g2 * w3).sum(), x)
        return g3

    assert_close(third(gan_kernels.pixel_norm), third(reference.pixel_norm))


@requires_ops
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
def test_opcheck(device, layout):
    torch.manual_seed(4)
    x = make_4d((2, 6, 3, 3), layout, torch.float32, device).requires_grad_()
    g = make_4d((2, 6, 3, 3), layout, torch.float32, device).requires_grad_()
    torch.library.opcheck(pixel_norm_op, (x, 1, 1e-8))
    torch.library.opcheck(pixel_norm_op, (x, -1, 0.5))
    torch.library.opcheck(pixel_norm_backward_op, (g, x, 1, 1e-8))


@pytest.mark.parametrize("device", DEVICES)
def test_penalty_through_pixel_norm_matches_reference(device):
    """R1-style penalty on a tiny D with pixel norm inside: every parameter gradient equals the
    reference path's, and no op on the path lacks an autograd kernel."""
    torch.manual_seed(5)
    conv = torch.nn.Conv2d(3, 8, 3, padding=1).double().to(device)
    head = torch.nn.Linear(8 * 4 * 4, 1).double().to(device)
    params = [conv.weight, conv.bias, head.weight]  # head.bias does not reach the input gradient
    x0 = torch.randn(4, 3, 4, 4, dtype=torch.float64, device=device)

    def penalty_and_grads(norm):
        x = x0.clone().requires_grad_()
        logits = head(norm(conv(x)).flatten(1))
        (g,) = torch.autograd.grad(logits.sum(), x, create_graph=True)
        penalty = g.square().sum(dim=[1, 2, 3]).mean()
        return penalty, torch.autograd.grad(penalty, params)

    assert_same_penalty_and_grads(penalty_and_grads, gan_kernels.pixel_norm, reference.pixel_norm)


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_fullgraph(device):
    torch.manual_seed(6)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), gan_kernels.nn.PixelNorm(), torch.nn.LeakyReLU(0.2)
    ).to(device)
    assert_compiled_matches_eager(model, torch.randn(2, 3, 8, 8, device=device))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(0, 4, 3, 3), (2, 0, 3, 3), (2, 4, 0, 3), (1, 1, 1, 1), (1,), (7,)])
def test_empty_and_single_element(device, shape):
    torch.manual_seed(7)
    x = torch.randn(shape, dtype=torch.float64, device=device, requires_grad=True)
    dim = 1 if len(shape) > 1 else 0
    y = gan_kernels.pixel_norm(x, dim)
    assert y.shape == x.shape
    assert_close(y, reference.pixel_norm(x, dim))
    (gx,) = torch.autograd.grad(y.sum(), x)
    assert gx.shape == x.shape


def test_module_matches_function_and_has_no_state():
    layer = gan_kernels.nn.PixelNorm(dim=-1, eps=1e-6)
    x = torch.randn(3, 16)
    torch.testing.assert_close(layer(x), gan_kernels.pixel_norm(x, -1, 1e-6))
    assert layer.state_dict() == {}
    assert "dim=-1" in repr(layer) and "eps=1e-06" in repr(layer)


def test_matches_stylegan_normalize_2nd_moment():
    # StyleGAN's formula, written out: x * (x.square().mean(dim=1, keepdim=True) + eps).rsqrt()
    x = torch.randn(8, 512, dtype=torch.float64)
    expected = x * (x.square().mean(dim=1, keepdim=True) + 1e-8).rsqrt()
    assert_close(gan_kernels.pixel_norm(x), expected)


@requires_ops
@pytest.mark.skipif(_backend.IMPL == "reference", reason="GAN_KERNELS_IMPL=reference routes to the reference")
def test_public_function_runs_the_compiled_op():
    x = torch.randn(2, 4, 3, 3)
    with torch.autograd.profiler.profile() as prof:
        gan_kernels.pixel_norm(x)
    assert any(event.name == "gan_kernels::pixel_norm" for event in prof.function_events)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(x=torch.ones(2, 3, dtype=torch.int64)), TypeError, "x must be float64, float32, float16 or bfloat16"),
        (dict(x=torch.randn(2, 3), dim=2), IndexError, "dim=2 is out of range"),
        (dict(x=torch.randn(2, 3), dim=-3), IndexError, "dim=-3 is out of range"),
        (dict(x=torch.randn(2, 3), eps=-1.0), ValueError, "eps must be a finite number >= 0, got -1.0"),
        (dict(x=torch.randn(2, 3), eps=float("nan")), ValueError, "eps must be a finite number >= 0"),
        (dict(x=[1.0, 2.0]), TypeError, "x must be a torch.Tensor"),
    ],
)
def test_bad_input_names_the_argument(kwargs, error, match):
    with pytest.raises(error, match=match):
        gan_kernels.pixel_norm(**kwargs)


@requires_ops
def test_bad_input_to_the_ops_names_the_argument():
    x = torch.randn(2, 3)
    with pytest.raises(TypeError, match="x must be float64"):
        pixel_norm_op(torch.ones(2, 3, dtype=torch.int32), 1, 1e-8)
    with pytest.raises(IndexError, match="dim=5 is out of range"):
        pixel_norm_op(x, 5, 1e-8)
    with pytest.raises(ValueError, match="eps must be a finite number >= 0, got -0.5"):
        pixel_norm_op(x, 1, -0.5)
    with pytest.raises(ValueError, match=r"grad has shape \[2, 4\] but x has shape \[2, 3\]"):
        pixel_norm_backward_op(torch.randn(2, 4), x, 1, 1e-8)
    with pytest.raises(TypeError, match="grad has dtype torch.float64 but x has dtype torch.float32"):
        pixel_norm_backward_op(x.double(), x, 1, 1e-8)


def test_layer_rejects_negative_eps():
    with pytest.raises(ValueError, match="eps must be a finite number >= 0"):
        gan_kernels.nn.PixelNorm(eps=-1e-8)


@settings(max_examples=60, deadline=None)
@given(
    shape=st.lists(st.integers(1, 7), min_size=1, max_size=4),
    data=st.data(),
)
def test_random_shapes_dims_and_layouts_match_reference(shape, data):
    dim = data.draw(st.integers(-len(shape), len(shape) - 1), label="dim")
    order = data.draw(st.permutations(range(len(shape))), label="memory order")
    torch.manual_seed(data.draw(st.integers(0, 2**31 - 1), label="seed"))
    # A dense tensor whose memory order is `order`.
    x = torch.randn([shape[i] for i in order], dtype=torch.float64).permute(
        [order.index(i) for i in range(len(shape))]
    )
    grad_out = torch.randn(shape, dtype=torch.float64)
    y, gx = grads(gan_kernels.pixel_norm, x, dim, grad_out)
    y_ref, gx_ref = grads(reference.pixel_norm, x, dim, grad_out)
    assert_close(y, y_ref)
    assert_close(gx, gx_ref)
