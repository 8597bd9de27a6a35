"""The per-sample penalty op: (||g_i|| - center)^2, sum(g_i^2) for center 0. What only it promises:
the contracts every op keeps (parity with the reference, gradcheck, opcheck, a penalty through it,
compile, bad inputs) run in test_contracts.py."""

import pytest
import torch
from helpers import (
    DEVICES,
    FLOAT_DTYPES,
    LAYOUTS,
    OPS_REGISTERED,
    assert_close,
    make_4d,
    requires_ops,
)
from hypothesis import given, settings
from hypothesis import strategies as st

import gan_kernels
from gan_kernels import reference

penalty_backward_op = torch.ops.gan_kernels.gradient_penalty_backward.default if OPS_REGISTERED else None


def value_and_grad(fn, g, center, grad_out):
    g = g.detach().requires_grad_()
    out = fn(g, center)
    (dg,) = torch.autograd.grad(out, g, grad_out)
    return out, dg


@requires_ops
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("center", [0.0, 1.0])
def test_gradient_is_laid_out_like_g(device, layout, center):
    g = make_4d((2, 3, 4, 5), layout, torch.float32, device)
    grad = torch.randn(2, device=device)
    sum_squares = g.flatten(1).square().sum(1)
    dg = penalty_backward_op(grad, g, sum_squares, center)
    assert dg.stride() == torch.empty_like(g).stride()
    assert_close(dg, penalty_backward_op(grad, g.contiguous(), sum_squares, center))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("center", [0.0, 1.0])
def test_samples_larger_than_one_chunk(device, center):
    # 3 * 80 * 80 = 19200 elements per sample: several reduction chunks on CPU and GPU.
    torch.manual_seed(1)
    g = torch.randn(3, 3, 80, 80, dtype=torch.float64, device=device)
    grad_out = torch.randn(3, dtype=torch.float64, device=device)
    out, dg = value_and_grad(gan_kernels.per_sample_penalty, g, center, grad_out)
    out_ref, dg_ref = value_and_grad(reference.per_sample_penalty, g, center, grad_out)
    assert_close(out, out_ref)
    assert_close(dg, dg_ref)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_accumulates_in_float(device, dtype):
    # 4096 squares near 1: an fp16/bf16 accumulator stalls far below the true sum (~4096).
    torch.manual_seed(2)
    g = (1 + 0.1 * torch.rand(2, 4096, device=device)).to(dtype)
    out = gan_kernels.per_sample_penalty(g, 0.0)
    assert out.dtype == torch.float32
    assert_close(out, g.double().square().sum(1).float())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("center", [0.0, 1.0])
def test_low_precision_penalties_do_not_overflow_their_dtype(device, center):
    # sum(g^2) = 3 * 64 * 64 * 2.5^2 = 76800 > 65504: inf in fp16, finite in float32.
    g = torch.full((2, 3, 64, 64), 2.5, dtype=torch.float16, device=device, requires_grad=True)
    out = gan_kernels.per_sample_penalty(g, center)
    expected = (g.detach().double().flatten(1).norm(dim=1) - center).square()
    assert out.isfinite().all()
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=0)
    (dg,) = torch.autograd.grad(out.sum(), g)
    assert dg.dtype == torch.float16 and dg.isfinite().all()


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("center", [0.0, 1.0])
def test_a_diverged_sample_stays_visible(device, dtype, center):
    # README "NaN and infinity": a NaN element makes its sample's penalty NaN, an infinite one inf;
    # for center != 0 that sample's whole gradient is NaN, for center == 0 the gradient 2 g is
    # non-finite exactly where g is. Other samples are untouched.
    torch.manual_seed(5)
    g = torch.randn(3, 2, 4, dtype=dtype, device=device)
    g[1, 0, 2] = NAN
    g[2, 1, 1] = -INF
    g.requires_grad_()
    for fn in (gan_kernels.per_sample_penalty, reference.per_sample_penalty):
        out = fn(g, center)
        (dg,) = torch.autograd.grad(out.sum(), g)
        assert out[1].isnan() and out[2] == INF
        assert_close(out[0], reference.per_sample_penalty(g.detach()[:1], center)[0])
        if center == 0:
            assert dg[1, 0, 2].isnan() and dg[2, 1, 1] == -INF
            assert_close(dg[1:].nan_to_num(0, 0, 0), (2 * g.detach()[1:]).nan_to_num(0, 0, 0))
        else:
            assert dg[1:].isnan().all()
        assert dg[0].isfinite().all()


@pytest.mark.parametrize("device", DEVICES)
def test_center_zero_is_the_plain_sum_of_squares(device):
    torch.manual_seed(3)
    g = torch.randn(5, 3, 4, 4, dtype=torch.float64, device=device)
    assert_close(gan_kernels.per_sample_penalty(g, 0.0), g.square().sum(dim=[1, 2, 3]))
    norm = g.flatten(1).norm(dim=1)
    assert_close(gan_kernels.per_sample_penalty(g, 1.0), (norm - 1).square())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("center", [1.0, 0.5])  # for center 0 the penalty is quadratic: no third derivative
def test_third_derivative_matches_reference(device, center):
    torch.manual_seed(6)
    g0 = torch.randn(3, 4, 2, 2, dtype=torch.float64, device=device)
    w1 = torch.randn(3, dtype=torch.float64, device=device)
    w2, w3 = torch.randn_like(g0), torch.randn_like(g0)

    def third(fn):
        g = g0.clone().requires_grad_()
        (d1,) = torch.autograd.grad((fn(g, center) * w1).sum(), g, create_graph=True)
        (d2,) = torch.autograd.grad((d1 * w2).sum(), g, create_graph=True)
        (d3,) = torch.autograd.grad((d2 * w3).sum(), g)
        return d3

    assert_close(third(gan_kernels.per_sample_penalty), third(reference.per_sample_penalty))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_second_derivative_of_a_tiny_gradient_is_finite(device, dtype):
    """Norms of 1e-14 to 1e-18: 1/||g||^3 overflows float32, the second derivative (about 1/||g||)
    does not. Rows with a zero element, where inf * 0 made NaN."""
    directions = torch.tensor([[3.0, 0.0, -4.0], [0.0, 1.0, 2.0], [1.0, -1.0, 0.0]])
    g0 = (directions * torch.tensor([[1e-14], [1e-16], [1e-18]])).to(dtype).to(device)
    torch.manual_seed(8)
    w = torch.randn(3, 3).to(dtype).to(device)  # exact in float64 too

    def second(fn, g0):
        g = g0.clone().requires_grad_()
        (d1,) = torch.autograd.grad(fn(g, 1.0).sum(), g, create_graph=True)
        (d2,) = torch.autograd.grad((d1 * w.to(g.dtype)).sum(), g)
        return d2

    got = second(gan_kernels.per_sample_penalty, g0)
    assert got.isfinite().all()
    # The same values in float64, through the reference (autograd through sqrt, finite there): our own
    # float64 path would share a wrong treatment of tiny norms (zeroing them, say) with the float32 one.
    want = second(reference.per_sample_penalty, g0.double())
    assert want.abs().min() > 1e12  # of order 1/||g||: the rows are not treated as zero gradients
    torch.testing.assert_close(got.double(), want, rtol=1e-5 if dtype == torch.float32 else 1.6e-2, atol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("center", [0.0, 1.0])
@pytest.mark.parametrize(
    "fn", [gan_kernels.per_sample_penalty, reference.per_sample_penalty], ids=["ours", "reference"]
)
def test_zero_rows_give_finite_derivatives_of_every_order(device, center, fn):
    torch.manual_seed(7)
    g = torch.randn(3, 4, 3, dtype=torch.float64, device=device)
    g[1] = 0
    g.requires_grad_()
    out = fn(g, center)
    assert out[1].item() == center**2
    (d1,) = torch.autograd.grad(out.sum(), g, create_graph=True)
    (d2,) = torch.autograd.grad((d1 * torch.randn_like(g)).sum(), g, create_graph=center != 0)
    derivatives = [d1, d2]
    if center != 0:  # for center 0 the penalty is quadratic: d2 is constant
        (d3,) = torch.autograd.grad((d2 * torch.randn_like(g)).sum(), g)
        derivatives.append(d3)
    for d in derivatives:
        assert torch.isfinite(d).all()
    # The gradient of sum(g^2) is 2 g, i.e. 0 at g = 0; for center != 0 the undefined derivatives are 0.
    assert (d1[1] == 0).all()
    if center != 0:
        assert (d2[1] == 0).all() and (d3[1] == 0).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("center", [0.0, 1.0])
@pytest.mark.parametrize("shape", [(0, 3, 2), (3, 0, 2), (1,), (5,), (3, 1, 1, 1), (1, 7, 1)])
def test_empty_and_odd_shapes(device, center, shape):
    torch.manual_seed(11)
    g = torch.randn(shape, dtype=torch.float64, device=device, requires_grad=True)
    out = gan_kernels.per_sample_penalty(g, center)
    assert out.shape == shape[:1]
    assert_close(out, reference.per_sample_penalty(g, center))
    (dg,) = torch.autograd.grad(out.sum(), g, allow_unused=True, materialize_grads=True)
    (dg_ref,) = torch.autograd.grad(reference.per_sample_penalty(g, center).sum(), g, materialize_grads=True)
    assert dg.shape == g.shape
    assert_close(dg, dg_ref)


@pytest.mark.parametrize("center", [0.0, 1.0])
def test_deterministic_whatever_the_thread_count(center):
    torch.manual_seed(12)
    g = torch.randn(4, 5, 70, 70)  # several reduction chunks per sample
    grad_out = torch.randn(4)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2, 1):
            torch.set_num_threads(n)
            results.append(value_and_grad(gan_kernels.per_sample_penalty, g, center, grad_out))
    finally:
        torch.set_num_threads(threads)
    for out, dg in results[1:]:
        assert torch.equal(out, results[0][0]) and torch.equal(dg, results[0][1])


@settings(max_examples=40, deadline=None)
@given(
    shape=st.lists(st.integers(1, 6), min_size=1, max_size=4),
    center=st.sampled_from([0.0, 1.0, 2.5]),
    data=st.data(),
)
def test_random_shapes_and_layouts_match_reference(shape, center, data):
    order = data.draw(st.permutations(range(len(shape))), label="memory order")
    torch.manual_seed(data.draw(st.integers(0, 2**31 - 1), label="seed"))
    g = torch.randn([shape[i] for i in order], dtype=torch.float64).permute([order.index(i) for i in range(len(shape))])
    grad_out = torch.randn(shape[0], dtype=torch.float64)
    out, dg = value_and_grad(gan_kernels.per_sample_penalty, g, center, grad_out)
    out_ref, dg_ref = value_and_grad(reference.per_sample_penalty, g, center, grad_out)
    assert_close(out, out_ref)
    assert_close(dg, dg_ref)


@pytest.mark.parametrize("center", [0.0, 1.0])
@pytest.mark.parametrize("shape", [(1, 3, 200, 200), (2, 70001)], ids=["one_sample", "two_odd_samples"])
def test_double_backward_does_not_depend_on_the_thread_count(center, shape):
    # One long sample is where torch's own sum splits a row across threads.
    torch.manual_seed(12)
    g0 = torch.randn(shape)
    w = torch.randn(shape)

    def second_order():
        g = g0.clone().requires_grad_()
        (dg,) = torch.autograd.grad(gan_kernels.per_sample_penalty(g, center).sum(), g, create_graph=True)
        return torch.autograd.grad((dg * w).sum(), g)[0]

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = second_order()
        torch.set_num_threads(max(2, threads))
        many = second_order()
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, many)


@requires_ops
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("center", [0.0, 0.5])
def test_backward_scales_g_by_the_sums_of_squares_it_is_given(device, center):
    # The backward takes each sample's norm from the forward's output instead of re-reading g for it:
    # given other sums, it scales g by 2 grad (1 - center / sqrt(sum)).
    torch.manual_seed(13)
    g = torch.randn(3, 4, 5, dtype=torch.float64, device=device)
    grad = torch.randn(3, dtype=torch.float64, device=device)
    sums = torch.tensor([4.0, 0.25, 9.0], dtype=torch.float64, device=device)
    expected = (2 * grad * (1 - center / sums.sqrt()))[:, None, None] * g
    assert_close(penalty_backward_op(grad, g, sums, center), expected)
