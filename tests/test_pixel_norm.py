"""Pixel norm: what only it promises. The contracts every op keeps (parity with the reference,
gradcheck, opcheck, a penalty through it, compile, bad inputs) run in test_contracts.py."""

import pytest
import torch
from helpers import DEVICES, assert_close, assert_same_bits, make_4d, on_thread_counts
from hypothesis import given, settings
from hypothesis import strategies as st

import gan_kernels
from gan_kernels import _backend, reference


def grads(fn, x, dim, grad_out):
    x = x.detach().requires_grad_()
    y = fn(x, dim)
    (gx,) = torch.autograd.grad(y, x, grad_out)
    return y, gx


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


def test_layer_rejects_negative_eps():
    with pytest.raises(ValueError, match="eps must be a finite number >= 0"):
        gan_kernels.nn.PixelNorm(eps=-1e-8)


# The CPU kernel's NCHW paths (csrc/cpu/pixel_norm_kernel.h): rows of few vector steps summed in runs
# of channels (21 channels: two runs and a remainder), long rows one channel at a time with a ragged
# last step (437 positions), and a sample split into two blocks (2500 positions, blocks of at most 2048).
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(3, 21, 3, 5), (2, 13, 19, 23), (2, 3, 50, 50)])
def test_nchw_blocks_match_reference(device, dtype, shape):
    torch.manual_seed(11)
    x = torch.randn(shape, dtype=dtype, device=device)
    grad_out = torch.randn(shape, dtype=dtype, device=device)
    y, gx = grads(gan_kernels.pixel_norm, x, 1, grad_out)
    y_ref, gx_ref = grads(reference.pixel_norm, x.double(), 1, grad_out.double())
    assert_close(y, y_ref.to(dtype), dtype)
    assert_close(gx, gx_ref.to(dtype), dtype)


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
    x = torch.randn([shape[i] for i in order], dtype=torch.float64).permute([order.index(i) for i in range(len(shape))])
    grad_out = torch.randn(shape, dtype=torch.float64)
    y, gx = grads(gan_kernels.pixel_norm, x, dim, grad_out)
    y_ref, gx_ref = grads(reference.pixel_norm, x, dim, grad_out)
    assert_close(y, y_ref)
    assert_close(gx, gx_ref)


@pytest.mark.skipif(_backend.IMPL == "reference", reason="GAN_KERNELS_IMPL=reference routes to the reference")
@pytest.mark.parametrize("shape, dim", [((1, 40000), 1), ((40000, 1), 0)])
def test_one_long_vector_gets_the_same_bits_on_any_thread_count(shape, dim):
    """The double backward's means over `dim` (aten ops) reduced a single vector of 32K elements or
    more in shares set by the thread count: its last bits changed between 1, 2 and 3 threads."""
    torch.manual_seed(12)
    x0 = torch.randn(shape)
    up, w = torch.randn(shape), torch.randn(shape)

    def second_order():
        x = x0.clone().requires_grad_()
        y = gan_kernels.pixel_norm(x, dim)
        (gx,) = torch.autograd.grad(y, x, up, create_graph=True)
        return [y.detach(), gx.detach(), torch.autograd.grad(gx, x, w)[0]]

    assert_same_bits(on_thread_counts(second_order))
