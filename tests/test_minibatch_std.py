"""Minibatch stddev: what only it promises. The contracts every op keeps (parity with the reference,
gradcheck, opcheck, a penalty through it, compile, bad inputs) run in test_contracts.py."""

import math
import re

import pytest
import torch
from helpers import (
    DEVICES,
    FLOAT_DTYPES,
    OPS_REGISTERED,
    assert_close,
    make_4d,
    requires_ops,
)
from hypothesis import given, settings
from hypothesis import strategies as st

import gan_kernels
from gan_kernels import reference

minibatch_std_op = torch.ops.gan_kernels.minibatch_std.default if OPS_REGISTERED else None
minibatch_std_backward_op = torch.ops.gan_kernels.minibatch_std_backward.default if OPS_REGISTERED else None


def stylegan2_minibatch_std(x, group_size, num_channels):
    """StyleGAN2-ADA's MinibatchStdLayer.forward, transcribed literally (no fp32 cast of its own)."""
    N, C, H, W = x.shape
    G = torch.min(torch.as_tensor(group_size), torch.as_tensor(N)) if group_size is not None else N
    F = num_channels
    c = C // F
    y = x.reshape(G, -1, F, c, H, W)
    y = y - y.mean(dim=0)
    y = y.square().mean(dim=0)
    y = (y + 1e-8).sqrt()
    y = y.mean(dim=[2, 3, 4])
    y = y.reshape(-1, F, 1, 1)
    y = y.repeat(G, 1, H, W)
    x = torch.cat([x, y], dim=1)
    return x


def grads(fn, x, grad_out, *args):
    x = x.detach().requires_grad_()
    y = fn(x, *args)
    (gx,) = torch.autograd.grad(y, x, grad_out)
    return y, gx


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape, layout", [((8, 64, 10, 10), "contiguous"), ((8, 96, 16, 16), "channels_last")])
def test_blocks_split_into_many_tiles_and_chunks_match_reference(device, dtype, shape, layout):
    """Rows longer than one CPU chunk (with a partial last chunk) and feature blocks spread over
    several CUDA tiles (with a partial last tile): forward, backward and the double backward."""
    torch.manual_seed(10)
    x0 = make_4d(shape, layout, dtype, device)
    n, c, h, w = shape
    grad0 = torch.randn(n, c + 2, h, w, dtype=dtype, device=device)
    w2 = torch.randn_like(x0)

    def run(fn):
        x, grad = x0.clone().requires_grad_(), grad0.clone().requires_grad_()
        y = fn(x, 4, 2)
        (g1,) = torch.autograd.grad(y, x, grad, create_graph=True)
        return (y, g1) + torch.autograd.grad((g1 * w2).sum(), (x, grad))

    for got, want in zip(run(gan_kernels.minibatch_std), run(reference.minibatch_std)):
        assert_close(got, want)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(
    "shape, group_size, num_channels",
    [
        ((8, 16, 4, 4), 4, 1),  # StyleGAN2's default at its 4x4 epilogue
        ((6, 8, 3, 5), 2, 2),
        ((5, 6, 2, 2), 5, 3),  # N = G: one group
        ((3, 4, 4, 4), 4, 1),  # min(group_size, N) = 3
        ((4, 4, 1, 1), 2, 4),  # H = W = 1, one channel per feature
        ((6, 4, 3, 3), None, 1),  # the whole batch is one group
    ],
)
def test_matches_literal_stylegan2_formula(device, dtype, shape, group_size, num_channels):
    torch.manual_seed(1)
    x = torch.randn(shape, dtype=dtype, device=device)
    expected = stylegan2_minibatch_std(x.clone(), group_size, num_channels)
    assert_close(gan_kernels.minibatch_std(x, group_size, num_channels), expected)
    assert_close(gan_kernels.nn.MinibatchStd(group_size, num_channels)(x), expected)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_group_of_one_sample_has_std_sqrt_eps(device, dtype):
    torch.manual_seed(2)
    x = torch.randn(3, 6, 4, 2, dtype=dtype, device=device, requires_grad=True)
    y = gan_kernels.minibatch_std(x, 1, 2)
    torch.testing.assert_close(y[:, 6:], torch.full((3, 2, 4, 2), math.sqrt(1e-8), dtype=dtype, device=device))
    # sqrt(var + eps) does not depend on x when each group has one member: only the copy passes gradient.
    grad_out = torch.randn_like(y)
    (gx,) = torch.autograd.grad(y, x, grad_out)
    assert torch.equal(gx, grad_out[:, :6])


@pytest.mark.parametrize("device", DEVICES)
def test_grouping_is_strided(device):
    # N = 4, G = 2: samples {0, 2} form one group and {1, 3} the other.
    x = torch.tensor([0.0, 10.0, 2.0, 10.0], dtype=torch.float64, device=device).reshape(4, 1, 1, 1)
    stats = gan_kernels.minibatch_std(x, 2)[:, 1, 0, 0]
    expected = torch.tensor([1.0, 0.0, 1.0, 0.0], dtype=torch.float64, device=device).add(1e-8).sqrt()
    torch.testing.assert_close(stats, expected)


# The output's memory format for each input layout of helpers.make_4d.
OUTPUT_MEMORY_FORMATS = [
    ("contiguous", torch.contiguous_format),
    ("channels_last", torch.channels_last),
    ("strided", torch.contiguous_format),
    ("permuted", torch.contiguous_format),
]


@requires_ops
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout, memory_format", OUTPUT_MEMORY_FORMATS)
def test_output_memory_format_of_the_ops(device, layout, memory_format):
    # The ops promise this (and register_fake agrees).
    x = make_4d((4, 8, 3, 3), layout, torch.float32, device)
    assert minibatch_std_op(x, 4, 1).is_contiguous(memory_format=memory_format)
    grad = make_4d((4, 9, 3, 3), layout, torch.float32, device)
    assert minibatch_std_backward_op(grad, x, 4, 1).is_contiguous(memory_format=memory_format)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout, memory_format", OUTPUT_MEMORY_FORMATS)
def test_output_memory_format_of_the_reference(device, layout, memory_format):
    # The fallback (CUDA tensors of a build without CUDA kernels, GAN_KERNELS_IMPL=reference) keeps
    # the docstring's promise too: a channels_last D stays channels_last after the layer.
    x = make_4d((4, 8, 3, 3), layout, torch.float32, device)
    assert reference.minibatch_std(x, 4, 1).is_contiguous(memory_format=memory_format)
    assert reference.minibatch_std(x, 2, 2).is_contiguous(memory_format=memory_format)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_statistics_in_float32(device, dtype):
    # Squared deviations of ~300 overflow fp16 (max 65504); float32 statistics do not.
    x = (torch.randn(8, 32, 4, 4, device=device) * 300).to(dtype)
    y = gan_kernels.minibatch_std(x)
    assert torch.isfinite(y).all()
    assert_close(y, reference.minibatch_std(x.double()).to(dtype), dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_second_derivative_matches_reference(device, dtype, layout):
    """The R1 path: d/dx and d/dgrad of <w2, dL/dx>, through the fused double backward. G = 4: with
    G = 2 the std is |x1 - x2| / 2, whose second derivative vanishes up to eps, so both sides would
    compare rounding noise."""
    torch.manual_seed(5)
    x0 = make_4d((8, 6, 3, 4), layout, dtype, device)
    grad0 = torch.randn(8, 8, 3, 4, dtype=dtype, device=device)
    w2 = torch.randn_like(x0)

    def second(fn):
        x, grad = x0.clone().requires_grad_(), grad0.clone().requires_grad_()
        (g1,) = torch.autograd.grad(fn(x, 4, 2), x, grad, create_graph=True)
        return (g1,) + torch.autograd.grad((g1 * w2).sum(), (x, grad))

    for got, want in zip(second(gan_kernels.minibatch_std), second(reference.minibatch_std)):
        assert got.dtype == dtype
        assert_close(got, want)


@pytest.mark.parametrize("device", DEVICES)
def test_third_derivative_matches_reference(device):
    torch.manual_seed(5)
    x0 = torch.randn(4, 6, 3, 3, dtype=torch.float64, device=device)
    w1 = torch.randn(4, 8, 3, 3, dtype=torch.float64, device=device)
    w2, w3 = torch.randn_like(x0), torch.randn_like(x0)

    def third(fn):
        x = x0.clone().requires_grad_()
        (g1,) = torch.autograd.grad((fn(x, 2, 2) * w1).sum(), x, create_graph=True)
        (g2,) = torch.autograd.grad((g1 * w2).sum(), x, create_graph=True)
        (g3,) = torch.autograd.grad((g2 * w3).sum(), x)
        return g3

    assert_close(third(gan_kernels.minibatch_std), third(reference.minibatch_std))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(0, 4, 3, 3), (4, 4, 0, 3), (4, 4, 3, 0)])
def test_empty(device, shape):
    x = torch.randn(shape, dtype=torch.float64, device=device, requires_grad=True)
    y = gan_kernels.minibatch_std(x, 4, 2)
    n, c, h, w = shape
    assert y.shape == (n, c + 2, h, w)
    assert y.shape == reference.minibatch_std(x, 4, 2).shape
    (gx,) = torch.autograd.grad(y.sum(), x)
    assert gx.shape == x.shape


def test_module_matches_function_and_has_no_state():
    layer = gan_kernels.nn.MinibatchStd(group_size=2, num_channels=3)
    x = torch.randn(4, 6, 3, 3)
    torch.testing.assert_close(layer(x), gan_kernels.minibatch_std(x, 2, 3))
    assert layer.state_dict() == {}
    assert "group_size=2" in repr(layer) and "num_channels=3" in repr(layer)
    assert "group_size=None" in repr(gan_kernels.nn.MinibatchStd(None))


def test_whole_batch_groups_are_not_specialised_to_the_traced_batch_size():
    # group_size=None passed N itself to the op, a constant to the tracer: torch.compile(dynamic=True)
    # compiled once per batch size (with fullgraph=True, FailOnRecompileLimitHit at the ninth) and
    # torch.export refused a dynamic batch.
    import torch._dynamo.testing

    layer = gan_kernels.nn.MinibatchStd(group_size=None)
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(layer, fullgraph=True, dynamic=True, backend=counter)
    for n in (2, 3, 5):
        x = torch.randn(n, 4, 3, 3)
        torch.testing.assert_close(compiled(x), gan_kernels.minibatch_std(x, n), rtol=0, atol=0)
    assert counter.frame_count == 1
    program = torch.export.export(
        layer, (torch.randn(6, 4, 3, 3),), dynamic_shapes={"x": {0: torch.export.Dim("n", min=2)}}
    )
    x = torch.randn(7, 4, 3, 3)
    torch.testing.assert_close(program.module()(x), gan_kernels.minibatch_std(x, 7), rtol=0, atol=0)


@requires_ops
def test_results_do_not_depend_on_the_thread_count():
    torch.manual_seed(9)
    x = torch.randn(8, 64, 16, 16)
    grad_out = torch.randn(8, 65, 16, 16)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        y1, g1 = grads(gan_kernels.minibatch_std, x, grad_out)
        torch.set_num_threads(max(2, threads))
        y2, g2 = grads(gan_kernels.minibatch_std, x, grad_out)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(y1, y2) and torch.equal(g1, g2)


def test_bad_arguments_of_the_layer():
    with pytest.raises(ValueError, match="group_size must be >= 1, got 0"):
        gan_kernels.nn.MinibatchStd(group_size=0)
    with pytest.raises(ValueError, match="num_channels must be >= 1, got 0"):
        gan_kernels.nn.MinibatchStd(num_channels=0)
    # group_size=None (the whole batch) with an x that is not 4-D: the error is x's shape, not
    # "group_size must be an int, got NoneType".
    for x in (torch.randn(4, 8, 3), torch.tensor(1.0)):
        with pytest.raises(
            ValueError, match=rf"x must be a 4-D tensor \[N, C, H, W\], got shape {re.escape(str(list(x.shape)))}"
        ):
            gan_kernels.nn.MinibatchStd(group_size=None)(x)


@settings(max_examples=40, deadline=None)
@given(
    groups=st.integers(1, 3),
    group=st.integers(1, 4),
    extra_group_size=st.integers(0, 3),
    features=st.integers(1, 3),
    channels_per_feature=st.integers(1, 3),
    height=st.integers(1, 4),
    width=st.integers(1, 4),
    data=st.data(),
)
def test_random_shapes_and_layouts_match_reference(
    groups, group, extra_group_size, features, channels_per_feature, height, width, data
):
    # group_size > N exercises min(group_size, N); a batch of one group makes G = N.
    n = groups * group
    group_size = group + extra_group_size if groups == 1 else group
    shape = (n, features * channels_per_feature, height, width)
    order = data.draw(st.permutations(range(4)), label="memory order")
    torch.manual_seed(data.draw(st.integers(0, 2**31 - 1), label="seed"))
    x = torch.randn([shape[i] for i in order], dtype=torch.float64).permute([order.index(i) for i in range(4)])
    grad_out = torch.randn(n, shape[1] + features, height, width, dtype=torch.float64)
    y, gx = grads(gan_kernels.minibatch_std, x, grad_out, group_size, features)
    y_ref, gx_ref = grads(reference.minibatch_std, x, grad_out, group_size, features)
    assert_close(y, y_ref)
    assert_close(gx, gx_ref)


def _r1_grads(fn, x, grad_out):
    """dL/dx and d(||dL/dx||^2)/dx (the R1 double backward through the layer)."""
    x = x.detach().requires_grad_()
    (gx,) = torch.autograd.grad(fn(x, 2, 1), x, grad_out, create_graph=True)
    (ggx,) = torch.autograd.grad(gx.square().sum(), x)
    return gx.detach(), ggx


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("spread", [1.0, 1e-5], ids=["offset", "near_zero_variance"])
def test_gradients_as_accurate_as_stylegan2_on_data_with_a_large_mean(device, spread):
    # float32, groups of 2, data around 100: mean(x) rounds by ~4e-6, which a closed-form gradient
    # c (x - mean) / s passes on amplified by 1/s (the previous kernels: 180x and 450x StyleGAN's
    # error here); autograd through StyleGAN's y - y.mean() subtracts it again. With almost no group
    # variance s is about sqrt(1e-8), and amplifies it 1e4-fold.
    torch.manual_seed(11)
    x = 100 + spread * torch.randn(8, 6, 4, 4, device=device)
    grad_out = torch.randn(8, 7, 4, 4, device=device)
    exact = _r1_grads(stylegan2_minibatch_std, x.double(), grad_out.double())
    theirs = _r1_grads(stylegan2_minibatch_std, x, grad_out)
    ours = _r1_grads(gan_kernels.minibatch_std, x, grad_out)
    for got, ref, want in zip(ours, theirs, exact):
        our_error = (got.double() - want).abs().max().item()
        their_error = (ref.double() - want).abs().max().item()
        scale = want.abs().max().item()
        # Within a few float32 roundings of what StyleGAN2's own layer achieves.
        assert our_error <= 4 * their_error + 1e-6 * scale, (our_error, their_error, scale)


@requires_ops
@pytest.mark.parametrize(
    "dtype, bits", [(torch.bfloat16, torch.int16), (torch.float16, torch.int16), (torch.float32, torch.int32)]
)
def test_the_forward_copies_x_into_the_output_bit_for_bit(dtype, bits):
    # As torch.cat does: NaN payloads included (a round trip through float made them canonical).
    x = torch.randn(8, 4, 5, 17).to(dtype)  # 85 positions per channel: 5 vector strips and a tail of 5
    raw = x.view(bits)
    payloads = torch.tensor([0x7F81, 0x7FC3, -0x0081] if bits == torch.int16 else [0x7F800001, 0x7FC00003, -0x7F])
    raw[0, 0, 0, :3] = payloads.to(bits)  # in the first strip
    raw[0, 0, 4, -3:] = payloads.to(bits)  # in the tail
    x = raw.view(dtype)
    y = gan_kernels.minibatch_std(x, 4, 1)
    assert torch.equal(y[:, :4].contiguous().view(bits), x.view(bits))
