import math
import os
import sys

import pytest
import torch
from helpers import (
    DEVICES,
    FLOAT_DTYPES,
    OPS_REGISTERED,
    assert_close,
    assert_compiled_matches_eager,
    assert_same_penalty_and_grads,
    requires_ops,
    unregistered_autograd_is_an_error,
)

import gan_kernels
from gan_kernels import _backend, reference
from gan_kernels.nn import MinibatchDiscrimination

# The benchmarks' measurement of CPU peak memory, so the test and the benchmark table measure alike.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
from harness import cpu_peak_bytes  # noqa: E402

ops = torch.ops.gan_kernels if OPS_REGISTERED else None
forward_op = ops.minibatch_discrimination.default if OPS_REGISTERED else None
backward_op = ops.minibatch_discrimination_backward.default if OPS_REGISTERED else None
double_backward_op = ops.minibatch_discrimination_double_backward.default if OPS_REGISTERED else None

M_LAYOUTS = ["contiguous", "transposed", "strided", "expanded"]
NAN = float("nan")


def make_m(shape, layout, dtype=torch.float64, device="cpu"):
    """Random N(0, 1/C^2) values of shape [N, B, C] in one of M_LAYOUTS (never zeros): pairs of
    samples lie at L1 distance ~1, where the similarities exp(-d) are far from 0."""
    n, b, c = shape
    if layout == "contiguous":
        t = torch.randn(shape, dtype=dtype, device=device)
    elif layout == "transposed":  # dense, in C, N, B memory order
        t = torch.randn(c, n, b, dtype=dtype, device=device).permute(1, 2, 0)
    elif layout == "strided":  # not dense: every other kernel and dim of a larger tensor
        t = torch.randn(n, 2 * b, 2 * c, dtype=dtype, device=device)[:, ::2, ::2]
    elif layout == "expanded":  # overlapping: every kernel sees the same values (stride 0)
        t = torch.randn(n, 1, c, dtype=dtype, device=device).expand(n, b, c)
    else:
        raise ValueError(layout)
    return t / c


def paper_minibatch_discrimination(m):
    """The paper's formula transcribed in plain PyTorch: the [N, N, B, C] differences, the sum over all
    j (the paper's, which counts j = i), less that self term exp(0) = 1 (exact for finite m)."""
    differences = m.unsqueeze(0) - m.unsqueeze(1)
    return torch.exp(-differences.abs().sum(dim=3)).sum(dim=0) - 1


def paper_layer(x, T):
    """MinibatchDiscrimination transcribed in plain PyTorch on the layer's tensor T [A, B, C], used
    with its runtime gain 1 / (C sqrt(A))."""
    a, b, c = T.shape
    m = (x @ (T / (c * math.sqrt(a))).reshape(a, b * c)).reshape(-1, b, c)
    return torch.cat([x, paper_minibatch_discrimination(m)], dim=1)


def grads(fn, m, grad_out):
    m = m.detach().requires_grad_()
    o = fn(m)
    (dm,) = torch.autograd.grad(o, m, grad_out)
    return o, dm


def second_order(fn, m, grad_out, upstream):
    """dL/dm and d<dL/dm, upstream>/dm, as a penalty on the gradient needs them."""
    m = m.detach().requires_grad_()
    (dm,) = torch.autograd.grad(fn(m), m, grad_out, create_graph=True)
    (ddm,) = torch.autograd.grad(dm, m, upstream)
    return dm, ddm


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("layout", M_LAYOUTS)
def test_forward_and_backward_match_reference(device, dtype, layout):
    torch.manual_seed(0)
    m = make_m((6, 5, 3), layout, dtype, device)
    grad_out = torch.randn(6, 5, dtype=dtype, device=device)
    o, dm = grads(gan_kernels.minibatch_discrimination, m, grad_out)
    o_ref, dm_ref = grads(reference.minibatch_discrimination, m, grad_out)
    assert o.shape == (6, 5) and o.dtype == dtype and dm.dtype == dtype
    assert_close(o, o_ref)
    assert_close(dm, dm_ref)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("layout", ["contiguous", "transposed"])
def test_second_derivative_matches_reference(device, dtype, layout):
    torch.manual_seed(1)
    m = make_m((7, 4, 3), layout, dtype, device)
    grad_out = torch.randn(7, 4, dtype=dtype, device=device)
    upstream = make_m((7, 4, 3), layout, dtype, device)
    for got, want in zip(
        second_order(gan_kernels.minibatch_discrimination, m, grad_out, upstream),
        second_order(reference.minibatch_discrimination, m, grad_out, upstream),
    ):
        assert got.dtype == dtype
        assert_close(got, want)


@pytest.mark.parametrize("device", DEVICES)
def test_matches_the_papers_formula(device):
    torch.manual_seed(2)
    m = torch.randn(9, 4, 5, dtype=torch.float64, device=device) / 5
    assert_close(gan_kernels.minibatch_discrimination(m), paper_minibatch_discrimination(m))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_accumulates_in_float(device, dtype):
    # 4096 partners each adding ~0.999: an fp16 or bf16 running sum stops growing at 2048 or 256,
    # where the next addend is below half an ulp; a float accumulator reaches ~4092.
    torch.manual_seed(3)
    m = (1e-3 * torch.randn(4097, 1, 1, device=device)).to(dtype)
    o = gan_kernels.minibatch_discrimination(m)
    expected = reference.minibatch_discrimination(m.double())
    assert expected.min() > 4000
    assert_close(o, expected.to(dtype), dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", M_LAYOUTS)
def test_gradcheck_and_gradgradcheck(device, layout):
    torch.manual_seed(4)
    fn = gan_kernels.minibatch_discrimination
    if layout == "expanded":  # gradcheck perturbs elements one by one: expand inside the function
        m = torch.randn(4, 1, 2, dtype=torch.float64, device=device, requires_grad=True)
        fn = lambda base: gan_kernels.minibatch_discrimination(base.expand(4, 3, 2))  # noqa: E731
    else:
        m = make_m((4, 3, 2), layout, torch.float64, device).requires_grad_()
    assert torch.autograd.gradcheck(fn, (m,))
    assert torch.autograd.gradgradcheck(fn, (m,))


@requires_ops
@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck_and_gradgradcheck_of_the_backward_ops(device):
    # Third and fourth derivatives: the registered backwards of the backward and double-backward ops.
    torch.manual_seed(5)
    m = (torch.randn(4, 2, 3, dtype=torch.float64, device=device) / 3).requires_grad_()
    g = torch.randn(4, 2, dtype=torch.float64, device=device, requires_grad=True)
    u = torch.randn(4, 2, 3, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(backward_op, (g, m))
    assert torch.autograd.gradgradcheck(backward_op, (g, m))
    assert torch.autograd.gradcheck(double_backward_op, (u, g, m))
    assert torch.autograd.gradgradcheck(double_backward_op, (u, g, m))


@pytest.mark.parametrize("device", DEVICES)
def test_third_derivative_matches_reference(device):
    torch.manual_seed(6)
    m0 = torch.randn(5, 3, 2, dtype=torch.float64, device=device)
    w1 = torch.randn(5, 3, dtype=torch.float64, device=device)
    w2, w3 = torch.randn_like(m0), torch.randn_like(m0)

    def third(fn):
        m = m0.clone().requires_grad_()
        (g1,) = torch.autograd.grad((fn(m) * w1).sum(), m, create_graph=True)
        (g2,) = torch.autograd.grad((g1 * w2).sum(), m, create_graph=True)
        (g3,) = torch.autograd.grad((g2 * w3).sum(), m)
        return g3

    got = third(gan_kernels.minibatch_discrimination)
    assert got.abs().sum() > 0
    assert_close(got, third(reference.minibatch_discrimination))


@requires_ops
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["contiguous", "transposed", "strided"])
def test_opcheck(device, layout):
    torch.manual_seed(7)
    m = make_m((5, 3, 4), layout, torch.float32, device).requires_grad_()
    g = torch.randn(5, 3, device=device).t().contiguous().t().requires_grad_()
    u = make_m((5, 3, 4), layout, torch.float32, device).requires_grad_()
    torch.library.opcheck(forward_op, (m,))
    torch.library.opcheck(backward_op, (g, m))
    torch.library.opcheck(double_backward_op, (u, g, m))


@requires_ops
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(1, 3, 2), (2, 3, 2), (0, 3, 2), (3, 0, 2), (3, 2, 0)])
def test_opcheck_small_and_empty(device, shape):
    torch.manual_seed(8)
    m = torch.randn(shape, device=device, requires_grad=True)
    g = torch.randn(shape[:2], device=device, requires_grad=True)
    u = torch.randn(shape, device=device, requires_grad=True)
    torch.library.opcheck(forward_op, (m,))
    torch.library.opcheck(backward_op, (g, m))
    torch.library.opcheck(double_backward_op, (u, g, m))


def small_discriminator(device, layer=None):
    """x [N, 3] -> lrelu(Linear) -> minibatch discrimination (8 -> 8 + 4) -> logit."""
    torch.manual_seed(9)
    body = torch.nn.Linear(3, 8).double().to(device)
    mbd = (layer or MinibatchDiscrimination(8, 4, 3)).double().to(device)
    head = torch.nn.Linear(12, 1).double().to(device)
    return body, mbd, head


@pytest.mark.parametrize("device", DEVICES)
def test_r1_penalty_through_the_layer_matches_the_papers_formula(device):
    """R1 on a tiny D with minibatch discrimination before its last layer: the penalty and every
    parameter gradient equal those of the plain-PyTorch transcription, and no op on the path lacks
    an autograd kernel."""
    body, mbd, head = small_discriminator(device)
    params = [body.weight, body.bias, mbd.T, head.weight]  # head.bias does not reach dD/dx
    x0 = torch.randn(10, 3, dtype=torch.float64, device=device)

    def penalty_and_grads(layer):
        x = x0.clone().requires_grad_()
        logits = head(layer(torch.nn.functional.leaky_relu(body(x), 0.2)))
        (g,) = torch.autograd.grad(logits.sum(), x, create_graph=True)
        penalty = g.square().sum(dim=1).mean()
        return penalty, torch.autograd.grad(penalty, params)

    assert_same_penalty_and_grads(penalty_and_grads, mbd, lambda h: paper_layer(h, mbd.T))


@pytest.mark.parametrize("device", DEVICES)
def test_gan_kernels_penalty_through_the_layer(device):
    # gan_kernels.gradient_penalty (its own fused op) on top: every op of the path has its autograd.
    body, mbd, head = small_discriminator(device)
    x = torch.randn(6, 3, dtype=torch.float64, device=device, requires_grad=True)
    with unregistered_autograd_is_an_error():
        logits = head(mbd(torch.nn.functional.leaky_relu(body(x), 0.2)))
        r1 = gan_kernels.gradient_penalty(logits, x, center=0.0).mean()
        (grad_t,) = torch.autograd.grad(r1, mbd.T)
    assert grad_t.abs().sum() > 0


@pytest.mark.parametrize("device", DEVICES)
def test_layer_matches_the_papers_formula_to_second_order(device):
    torch.manual_seed(10)
    layer = MinibatchDiscrimination(6, 5, 4).double().to(device)
    x0 = torch.randn(8, 6, dtype=torch.float64, device=device)
    grad_out = torch.randn(8, 11, dtype=torch.float64, device=device)

    def run(fn):
        x = x0.clone().requires_grad_()
        y = fn(x)
        gx, gt = torch.autograd.grad(y, [x, layer.T], grad_out, create_graph=True)
        # second order: the gradient of a penalty on dL/dx by T and by x
        return [y, gx, gt, *torch.autograd.grad(gx.square().sum(), [layer.T, x])]

    for got, want in zip(run(layer), run(lambda x: paper_layer(x, layer.T)), strict=True):
        assert want.abs().sum() > 0
        assert_close(got, want)


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_fullgraph(device):
    torch.manual_seed(11)
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), MinibatchDiscrimination(8, 4, 3), torch.nn.Linear(12, 1))
    assert_compiled_matches_eager(model.to(device), torch.randn(6, 5, device=device))


@pytest.mark.parametrize("device", DEVICES)
def test_batch_of_one_has_nothing_to_compare(device):
    m = torch.randn(1, 3, 2, dtype=torch.float64, device=device, requires_grad=True)
    o = gan_kernels.minibatch_discrimination(m)
    assert torch.equal(o, torch.zeros(1, 3, dtype=torch.float64, device=device))
    (dm,) = torch.autograd.grad(o, m, torch.randn_like(o), create_graph=True)
    assert torch.equal(dm, torch.zeros_like(m))
    (ddm,) = torch.autograd.grad(dm, m, torch.randn_like(m))
    assert torch.equal(ddm, torch.zeros_like(m))


@pytest.mark.parametrize("device", DEVICES)
def test_batch_of_two_in_closed_form(device):
    torch.manual_seed(12)
    m = (torch.randn(2, 3, 4, dtype=torch.float64, device=device) / 4).requires_grad_()
    grad_out = torch.randn(2, 3, dtype=torch.float64, device=device)
    o = gan_kernels.minibatch_discrimination(m)
    d = m[0] - m[1]
    e = torch.exp(-d.abs().sum(dim=1))  # [B]
    assert_close(o, torch.stack([e, e]).detach())
    (dm,) = torch.autograd.grad(o, m, grad_out)
    # d/dm_0 of (g_0 + g_1) e = -(g_0 + g_1) e sign(m_0 - m_1), the opposite for m_1
    dm_0 = -((grad_out[0] + grad_out[1]) * e)[:, None] * d.sign()
    assert_close(dm, torch.stack([dm_0, -dm_0]).detach())


def tied_m(device):
    """Samples 0 and 1 tie in dim 0 of every kernel; samples 2 and 3 equal sample 0 everywhere."""
    torch.manual_seed(13)
    m = torch.randn(5, 3, 4, dtype=torch.float64, device=device) / 4
    m[1, :, 0] = m[0, :, 0]
    m[2] = m[0]
    m[3] = m[0]
    return m


@pytest.mark.parametrize("device", DEVICES)
def test_derivative_at_ties_is_that_of_sign_zero(device):
    # |d| has no derivative at d = 0; it is defined as sign(0) = 0, as torch.abs's gradient.
    m = tied_m(device)
    grad_out = torch.randn(5, 3, dtype=torch.float64, device=device)
    upstream = torch.randn_like(m)
    o, dm = grads(gan_kernels.minibatch_discrimination, m, grad_out)
    o_ref, dm_ref = grads(reference.minibatch_discrimination, m, grad_out)
    assert_close(o, o_ref)
    assert_close(dm, dm_ref)
    for got, want in zip(
        second_order(gan_kernels.minibatch_discrimination, m, grad_out, upstream),
        second_order(reference.minibatch_discrimination, m, grad_out, upstream),
    ):
        assert_close(got, want)
    # Written out for sample 1, dim 0: its only nonzero terms come from samples 4 (not tied with it).
    d = m[1] - m[4]
    e = torch.exp(-d.abs().sum(dim=1))
    expected = -(grad_out[1] + grad_out[4]) * e * d[:, 0].sign()
    assert_close(dm[1, :, 0], expected)


@pytest.mark.parametrize("device", DEVICES)
def test_identical_samples_are_fully_similar_with_zero_gradient(device):
    m = torch.randn(1, 3, 4, dtype=torch.float64, device=device).expand(4, 3, 4)
    o, dm = grads(gan_kernels.minibatch_discrimination, m, torch.randn(4, 3, dtype=torch.float64, device=device))
    assert torch.equal(o, torch.full_like(o, 3.0))  # each sample: 3 partners at distance 0
    assert torch.equal(dm, torch.zeros_like(dm))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "fn", [gan_kernels.minibatch_discrimination, reference.minibatch_discrimination], ids=["public", "reference"]
)
def test_nan_is_visible_in_every_dependent_output_and_gradient(device, fn):
    # README "NaN and infinity": sample 2 diverged in kernel 0. Every o[:, 0] compares with it, so
    # every one is NaN, and so is every gradient of kernel 0; kernels 1 and 2 stay finite.
    torch.manual_seed(14)
    m = torch.randn(4, 3, 2, dtype=torch.float64, device=device)
    m[2, 0, 1] = NAN
    grad_out = torch.randn(4, 3, dtype=torch.float64, device=device)
    upstream = torch.randn_like(m)
    o, dm = grads(fn, m, grad_out)
    assert o[:, 0].isnan().all() and o[:, 1:].isfinite().all()
    assert dm[:, 0].isnan().all() and dm[:, 1:].isfinite().all()
    dm2, ddm = second_order(fn, m, grad_out, upstream)
    assert dm2[:, 0].isnan().all() and dm2[:, 1:].isfinite().all()
    assert ddm[:, 0].isnan().all() and ddm[:, 1:].isfinite().all()
    # dL/dgrad of the double backward: the forward's derivative along upstream
    leaf = m.clone().requires_grad_()
    g = grad_out.clone().requires_grad_()
    (dm3,) = torch.autograd.grad(fn(leaf), leaf, g, create_graph=True)
    (dgrad,) = torch.autograd.grad(dm3, g, upstream)
    assert dgrad[:, 0].isnan().all() and dgrad[:, 1:].isfinite().all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "fn", [gan_kernels.minibatch_discrimination, reference.minibatch_discrimination], ids=["public", "reference"]
)
def test_nan_in_a_batch_of_one_is_not_visible(device, fn):
    # Nothing depends on a lone sample (o = 0): neither o nor its gradient may be NaN.
    m = torch.tensor([[[NAN, 1.0]]], dtype=torch.float64, device=device, requires_grad=True)
    o = fn(m)
    (dm,) = torch.autograd.grad(o, m, torch.ones_like(o))
    assert torch.equal(o, torch.zeros_like(o)) and torch.equal(dm, torch.zeros_like(dm))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "fn", [gan_kernels.minibatch_discrimination, reference.minibatch_discrimination], ids=["public", "reference"]
)
def test_an_infinitely_distant_sample_gives_the_formulas_limit(device, fn):
    # Sample 2 is at +inf in kernel 0: similarity 0 with every other sample, and no derivative.
    torch.manual_seed(18)
    m = torch.randn(4, 3, 2, dtype=torch.float64, device=device) / 2
    m[2, 0, 1] = float("inf")
    grad_out = torch.randn(4, 3, dtype=torch.float64, device=device)
    upstream = torch.randn_like(m)
    o, dm = grads(fn, m, grad_out)
    finite = m.clone()
    finite[2, 0] = 1e6  # as far as makes exp(-d) 0 in float64
    o_limit, dm_limit = grads(reference.minibatch_discrimination, finite, grad_out)
    assert o[2, 0] == 0 and o.isfinite().all() and dm.isfinite().all()
    assert_close(o, o_limit)
    assert_close(dm, dm_limit)
    dm2, ddm = second_order(fn, m, grad_out, upstream)
    assert_close(ddm, second_order(reference.minibatch_discrimination, finite, grad_out, upstream)[1])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(0, 3, 2), (3, 0, 2), (3, 2, 0)])
def test_empty(device, shape):
    m = torch.randn(shape, dtype=torch.float64, device=device, requires_grad=True)
    o = gan_kernels.minibatch_discrimination(m)
    assert o.shape == shape[:2]
    assert_close(o, reference.minibatch_discrimination(m))  # C = 0: every pair at distance 0
    (dm,) = torch.autograd.grad(o.sum(), m)
    assert dm.shape == m.shape


@requires_ops
def test_results_do_not_depend_on_the_thread_count():
    torch.manual_seed(15)
    m = torch.randn(64, 24, 5) / 5
    grad_out = torch.randn(64, 24)
    upstream = torch.randn_like(m)
    threads = torch.get_num_threads()
    results = []
    try:
        for count in (1, max(2, threads)):
            torch.set_num_threads(count)
            results.append(
                [
                    *grads(gan_kernels.minibatch_discrimination, m, grad_out),
                    *second_order(gan_kernels.minibatch_discrimination, m, grad_out, upstream),
                ]
            )
    finally:
        torch.set_num_threads(threads)
    for one, many in zip(*results, strict=True):
        assert torch.equal(one, many)


@requires_ops
@pytest.mark.skipif(_backend.IMPL == "reference", reason="GAN_KERNELS_IMPL=reference routes to the reference")
def test_public_function_runs_the_compiled_op():
    m = torch.randn(4, 3, 2)
    with torch.autograd.profiler.profile() as prof:
        gan_kernels.minibatch_discrimination(m)
    assert any(event.name == "gan_kernels::minibatch_discrimination" for event in prof.function_events)


@requires_ops
@pytest.mark.skipif(_backend.IMPL == "reference", reason="GAN_KERNELS_IMPL=reference routes to the reference")
def test_peak_memory_at_128_samples_is_below_the_eager_formula():
    """Forward and backward at the paper's B = 100, C = 5 and N = 128, float32: the eager formula holds
    [N, N-1, B, C] differences and their abs (32.5 MB each) and more for autograd; ours holds only the
    outputs (51 kB and 256 kB) and, outside tensors, per thread at most (3C + 7) N accumulators
    (the double backward's buffers; 22 kB as doubles), added here as a bound."""
    torch.manual_seed(16)
    n, kernels, dims = 128, 100, 5
    m = torch.randn(n, kernels, dims, requires_grad=True)
    grad_out = torch.randn(n, kernels)

    def step(fn):
        return lambda: torch.autograd.grad(fn(m), m, grad_out)

    # cpu_peak_bytes sees tensors only: the kernel's per-thread scratch is added as its bound.
    scratch_bound = torch.get_num_threads() * (3 * dims + 7) * n * 8
    ours = cpu_peak_bytes(step(gan_kernels.minibatch_discrimination)) + scratch_bound
    eager = cpu_peak_bytes(step(reference.minibatch_discrimination))
    pair_tensor = n * (n - 1) * kernels * dims * 4
    assert eager >= 2 * pair_tensor  # the measurement sees the eager formula's pair tensors
    assert ours < 2 * (m.nbytes + grad_out.nbytes)
    assert ours < eager / 50


BAD_INPUTS = [
    (
        dict(m=torch.randn(4, 3)),
        ValueError,
        r"m must be a 3-D tensor \[N, B, C\] \(samples, kernels, kernel dims\), got shape \[4, 3\]",
    ),
    (dict(m=torch.randn(4, 3, 2, 1)), ValueError, r"m must be a 3-D tensor \[N, B, C\].*got shape \[4, 3, 2, 1\]"),
    (dict(m=torch.ones(4, 3, 2, dtype=torch.int64)), TypeError, "m must be float64, float32, float16 or bfloat16"),
    (dict(m=torch.ones(4, 3, 2, dtype=torch.complex64)), TypeError, "m must be float64, float32, float16 or bfloat16"),
]


@pytest.mark.parametrize("kwargs, error, match", BAD_INPUTS)
def test_bad_input_names_the_argument(kwargs, error, match):
    with pytest.raises(error, match=match):
        gan_kernels.minibatch_discrimination(**kwargs)


@requires_ops
@pytest.mark.parametrize("kwargs, error, match", BAD_INPUTS)
def test_the_op_gives_the_same_messages(kwargs, error, match):
    with pytest.raises(error, match=match):
        forward_op(kwargs["m"])


def test_non_tensor_input_names_the_argument():
    with pytest.raises(TypeError, match="m must be a torch.Tensor, got list"):
        gan_kernels.minibatch_discrimination([[[1.0]]])


@requires_ops
def test_bad_grad_and_upstream_to_the_backward_ops_name_them():
    m = torch.randn(4, 3, 2)
    with pytest.raises(
        ValueError,
        match=r"grad has shape \[4, 2\] but the output of minibatch_discrimination has "
        r"shape \[4, 3\]",
    ):
        backward_op(torch.randn(4, 2), m)
    with pytest.raises(TypeError, match="grad has dtype torch.float64 but m has dtype torch.float32"):
        backward_op(torch.randn(4, 3, dtype=torch.float64), m)
    with pytest.raises(ValueError, match=r"upstream has shape \[4, 3\] but m has shape \[4, 3, 2\]"):
        double_backward_op(torch.randn(4, 3), torch.randn(4, 3), m)
    with pytest.raises(TypeError, match="upstream has dtype torch.float16 but m has dtype torch.float32"):
        double_backward_op(torch.randn(4, 3, 2, dtype=torch.float16), torch.randn(4, 3), m)
    # A meta tensor beside CPU ones sends the call to the fake kernel, which returned uninitialised
    # memory on the CPU.
    with pytest.raises(ValueError, match="grad is on meta but m is on cpu"):
        backward_op(torch.randn(4, 3, device="meta"), m)
    with pytest.raises(ValueError, match="upstream is on meta but m is on cpu"):
        double_backward_op(torch.randn(4, 3, 2, device="meta"), torch.randn(4, 3), m)


@pytest.mark.parametrize(
    "args, error, match",
    [
        ((0, 4, 3), ValueError, "in_features must be >= 1, got 0"),
        ((8, 0, 3), ValueError, "num_kernels must be >= 1, got 0"),
        ((8, 4, -1), ValueError, "kernel_dim must be >= 1, got -1"),
        ((8, 4.0, 3), TypeError, "num_kernels must be an int, got float"),
        ((8, 4, True), TypeError, "kernel_dim must be an int, got bool"),
    ],
)
def test_bad_layer_arguments_name_the_argument(args, error, match):
    with pytest.raises(error, match=match):
        MinibatchDiscrimination(*args)


def test_bad_layer_input_names_it():
    layer = MinibatchDiscrimination(8, 4, 3)
    with pytest.raises(ValueError, match=r"x must be a 2-D tensor \[N, in_features=8\], got shape \[5, 7\]"):
        layer(torch.randn(5, 7))
    with pytest.raises(ValueError, match=r"x must be a 2-D tensor \[N, in_features=8\], got shape \[5, 8, 1\]"):
        layer(torch.randn(5, 8, 1))
    with pytest.raises(TypeError, match="x must be float64, float32, float16 or bfloat16, got torch.int64"):
        layer(torch.ones(5, 8, dtype=torch.int64))


def test_layer_shape_parameters_and_repr():
    layer = MinibatchDiscrimination(8, 4, 3)
    assert layer(torch.randn(5, 8)).shape == (5, 12)
    assert [name for name, _ in layer.named_parameters()] == ["T"] and layer.T.shape == (8, 4, 3)
    assert repr(layer) == "MinibatchDiscrimination(in_features=8, num_kernels=4, kernel_dim=3)"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_layer_follows_the_input_dtype(dtype):
    layer = MinibatchDiscrimination(8, 4, 3)
    x = torch.randn(5, 8, dtype=dtype)
    y = layer(x)
    assert y.dtype == dtype
    assert_close(y, paper_layer(x.double(), layer.T.double()).to(dtype), dtype)


def test_initialisation_puts_unit_variance_inputs_at_l1_distance_about_one():
    # T ~ N(0, 1) used times 1/(C sqrt(A)): rows of M of two unit-variance samples differ by
    # N(0, 2/C^2) per dim, so their expected L1 distance over C dims is 2/sqrt(pi) ~ 1.128, c_b ~ 0.3.
    torch.manual_seed(17)
    a, b, c = 64, 100, 5
    layer = MinibatchDiscrimination(a, b, c)
    assert layer.T.std().item() == pytest.approx(1.0, rel=0.02)
    assert layer.weight_gain == 1 / (c * math.sqrt(a))
    x = torch.randn(256, a)
    m = (x @ (layer.T * layer.weight_gain).flatten(1)).unflatten(1, (b, c))
    distances = (m[:128] - m[128:]).abs().sum(dim=2)  # 128 independent pairs x 100 kernels
    assert distances.mean().item() == pytest.approx(2 / math.sqrt(math.pi), rel=0.05)
    o = layer(x)[:, a:]
    assert 0.2 < (o / 255).mean().item() < 0.45  # the mean c_b over the 255 partners
