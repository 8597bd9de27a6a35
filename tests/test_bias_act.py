"""bias_act: what only it promises. The contracts every op keeps (parity with the reference,
gradcheck, opcheck, a penalty through it, compile, bad inputs) run in test_contracts.py."""

import math

import pytest
import torch
from helpers import (
    DEVICES,
    FLOAT_DTYPES,
    OPS_REGISTERED,
    assert_close,
    assert_same_bits,
    make_4d,
    on_thread_counts,
    requires_ops,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from op_registry import ACTS, SMOOTH_ACTS

import gan_kernels
from gan_kernels import _backend, reference

bias_act_grad_op = torch.ops.gan_kernels.bias_act_grad.default if OPS_REGISTERED else None


def grads(fn, x, b, grad_out, **kwargs):
    x = x.detach().requires_grad_()
    b = b.detach().requires_grad_()
    y = fn(x, b, **kwargs)
    gx, gb = torch.autograd.grad(y, (x, b), grad_out)
    return y, gx, gb


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dim", [0, 2, -1])
@pytest.mark.parametrize("act", ["lrelu", "swish"])
def test_any_dim_and_no_bias(device, dim, act):
    torch.manual_seed(1)
    x = torch.randn(4, 3, 5, 6, dtype=torch.float64, device=device)
    b = torch.randn(x.shape[dim], dtype=torch.float64, device=device)
    assert_close(gan_kernels.bias_act(x, b, dim, act), reference.bias_act(x, b, dim, act))
    assert_close(gan_kernels.bias_act(x, None, dim, act, clamp=0.5), reference.bias_act(x, None, dim, act, clamp=0.5))


def test_stylegan_defaults():
    torch.manual_seed(2)
    x = torch.randn(4, 6, dtype=torch.float64)
    b = torch.randn(6, dtype=torch.float64)
    v = x + b
    sqrt2 = math.sqrt(2)
    expected = {
        "linear": v,
        "relu": torch.relu(v) * sqrt2,
        "lrelu": torch.where(v > 0, v, 0.2 * v) * sqrt2,
        "tanh": torch.tanh(v),
        "sigmoid": torch.sigmoid(v),
        "elu": torch.nn.functional.elu(v),
        "selu": torch.nn.functional.selu(v),
        "softplus": torch.nn.functional.softplus(v),
        "swish": torch.sigmoid(v) * v * sqrt2,
    }
    for act, want in expected.items():
        assert_close(gan_kernels.bias_act(x, b, act=act), want)
    # Order bias -> act -> * gain -> clamp.
    want = (torch.where(v > 0, v, 0.1 * v) * 3.0).clamp(-1.5, 1.5)
    assert_close(gan_kernels.bias_act(x, b, act="lrelu", alpha=0.1, gain=3.0, clamp=1.5), want)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("act", ["linear", "relu", "lrelu"])
def test_clamp_gradient_passes_exactly_at_the_bounds(device, dtype, act):
    # With gain 1 and alpha 0.5 these pre-clamp values are exact in every dtype: +-1 sit on the bounds.
    x = torch.tensor([[1.0, -2.0, 0.75, 1.25, -2.5, -0.5]], dtype=dtype, device=device)
    alpha = 0.5 if act == "lrelu" else None
    kwargs = dict(act=act, alpha=alpha, gain=1.0, clamp=1.0)
    xg = x.clone().requires_grad_()
    y = gan_kernels.bias_act(xg, **kwargs)
    (gx,) = torch.autograd.grad(y.sum(), xg)
    xr = x.clone().requires_grad_()
    (gx_ref,) = torch.autograd.grad(reference.bias_act(xr, **kwargs).sum(), xr)
    assert_close(y, reference.bias_act(x, **kwargs))
    assert_close(gx, gx_ref)
    slope = {"linear": 1.0, "relu": 0.0, "lrelu": 0.5}[act]
    # torch.clamp passes the gradient at the bounds (StyleGAN's kernel does not): 1.0, and -2.0 under
    # lrelu, land exactly on a bound; 1.25 and -2.5 go past it; -2.0 under linear goes past -1.
    at_minus_two = 0.0 if act == "linear" else slope
    expected = [1.0, at_minus_two, 1.0, 0.0, 0.0, slope]
    assert gx.tolist() == [expected]


@requires_ops
@pytest.mark.parametrize("device", DEVICES)
def test_gradient_from_the_saved_output(device):
    torch.manual_seed(5)
    y = torch.randn(2, 3, 4, dtype=torch.float64, device=device, requires_grad=True)
    g = torch.randn(2, 3, 4, dtype=torch.float64, device=device, requires_grad=True)
    for gain in (1.7, -0.6):
        dv = bias_act_grad_op(g, y, None, 1, "lrelu", 0.3, gain, None, 1.0, True)
        slope = torch.where(y * gain > 0, torch.ones_like(y), torch.full_like(y, 0.3))
        assert_close(dv, g * gain * slope)
        assert torch.autograd.gradgradcheck(
            lambda grad, out: bias_act_grad_op(grad, out, None, 1, "lrelu", 0.3, gain, None, 1.0, True), (g, y)
        )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("act", SMOOTH_ACTS)
def test_third_derivative_matches_reference(device, act):
    torch.manual_seed(6)
    x0 = torch.randn(2, 5, 3, 3, dtype=torch.float64, device=device)
    b0 = torch.randn(5, dtype=torch.float64, device=device)
    w1, w2, w3 = (torch.randn_like(x0) for _ in range(3))

    def third(fn):
        x = x0.clone().requires_grad_()
        b = b0.clone().requires_grad_()
        y = fn(x, b, act=act, gain=1.2, clamp=1.0, scale=0.9)
        (g1,) = torch.autograd.grad((y * w1).sum(), x, create_graph=True)
        (g2,) = torch.autograd.grad((g1 * w2).sum(), x, create_graph=True)
        return torch.autograd.grad((g2 * w3).sum(), (x, b))

    got, want = third(gan_kernels.bias_act), third(reference.bias_act)
    assert want[0].abs().sum() > 0
    assert_close(got[0], want[0])
    assert_close(got[1], want[1])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(("act", "kink"), [("elu", 0.0), ("selu", 0.0), ("softplus", 20.0)])
def test_derivatives_at_a_kink_follow_pytorch(device, dtype, act, kink):
    """At the kink PyTorch's first derivative takes the lower piece and its second and third the
    upper one (0): ours gave exp(0) = 1 (elu) there, and softplus's sigmoid slope at 20."""
    x0 = torch.tensor([kink, -kink, kink - 0.5, kink + 0.5], dtype=dtype, device=device)

    def derivatives(fn):
        x = x0.clone().requires_grad_()
        y = fn(x, act=act)
        (g1,) = torch.autograd.grad(y.sum(), x, create_graph=True)
        (g2,) = torch.autograd.grad(g1.sum(), x, create_graph=True)
        (g3,) = torch.autograd.grad(g2.sum(), x)
        return g1, g2, g3

    for got, want in zip(derivatives(gan_kernels.bias_act), derivatives(reference.bias_act)):
        assert_close(got, want)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("act", ["linear", "relu", "lrelu"])
def test_piecewise_linear_acts_have_no_second_derivative(device, act):
    torch.manual_seed(6)
    x = torch.randn(2, 5, 3, dtype=torch.float64, device=device, requires_grad=True)
    y = gan_kernels.bias_act(x, act=act, clamp=0.9)
    (g1,) = torch.autograd.grad((y * torch.randn_like(y)).sum(), x, create_graph=True)
    if g1.requires_grad:
        (g2,) = torch.autograd.grad(g1.sum(), x, allow_unused=True, materialize_grads=True)
        assert g2.abs().max() == 0


@pytest.mark.parametrize("act", SMOOTH_ACTS)
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no_bias"])
def test_third_derivative_gradgradcheck(act, with_bias):
    # The first derivative's second derivatives: bias_act's third, through the autograd of
    # bias_act_grad and bias_act_grad2; without a bias, b has no input edge on any of the three.
    torch.manual_seed(11)
    x = torch.randn(2, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    w = torch.randn_like(x)
    inputs = (x, b) if with_bias else (x,)

    def first_derivative(*tensors):
        y = gan_kernels.bias_act(*tensors, act=act, gain=1.2, clamp=1.0, scale=0.9)
        return torch.autograd.grad((y * w).sum(), tensors, create_graph=True)

    assert torch.autograd.gradgradcheck(first_derivative, inputs)


@requires_ops
def test_every_derivative_runs_cpp_autograd_nodes():
    """All three ops' autograd is C++: a Python register_autograd node costs about 100 us per call, and
    an R1 or WGAN-GP step calls both backward ops in every layer of D."""
    ops = torch.ops.gan_kernels
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, requires_grad=True)
    with torch.autograd.profiler.profile() as prof:
        y = ops.bias_act(x, b, 1, "swish", 0.0, 1.0, 1.0, 1.0)
        (g,) = torch.autograd.grad(y.sum(), x, create_graph=True)
        (gg,) = torch.autograd.grad(g.square().sum(), x, create_graph=True)
        gg.sum().backward()
    # A C++ node is named after its class (torch::autograd::CppNode<...BiasActGrad>); the node of a
    # Python register_autograd after the op (GeneratedBackwardFor_gan_kernels_bias_act_grad_...).
    assert "BiasAct>" in y.grad_fn.name()
    assert "BiasActGrad>" in g.grad_fn.name()
    assert "BiasActGrad2>" in gg.grad_fn.name()
    evaluated = "autograd::engine::evaluate_function: "
    ours = {e.name for e in prof.function_events if e.name.startswith(evaluated) and "gan_kernels" in e.name}
    assert {name.rsplit("::", 1)[-1] for name in ours} == {"BiasAct>", "BiasActGrad>", "BiasActGrad2>"}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "shape, dim",
    [
        ((0, 4, 3, 3), 1),
        ((2, 0, 3, 3), 1),
        ((2, 4, 0, 3), 1),
        ((1, 1, 1, 1), 1),
        ((7,), 0),
        ((5, 1, 3), 1),
        ((3, 7, 1, 1), 1),
    ],
)
def test_empty_and_odd_shapes(device, shape, dim):
    torch.manual_seed(9)
    x = torch.randn(shape, dtype=torch.float64, device=device, requires_grad=True)
    b = torch.randn(shape[dim], dtype=torch.float64, device=device, requires_grad=True)
    y = gan_kernels.bias_act(x, b, dim, "swish", clamp=0.7)
    assert y.shape == x.shape
    assert_close(y, reference.bias_act(x, b, dim, "swish", clamp=0.7))
    gx, gb = torch.autograd.grad(y.sum(), (x, b))
    assert gx.shape == x.shape and gb.shape == b.shape


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("act", ["lrelu", "tanh"])
def test_tensors_split_across_threads_match_reference(device, dtype, layout, act):
    # Large enough for many parallel tasks, with odd sizes so tasks start and end inside a channel's run.
    torch.manual_seed(10)
    x = make_4d((3, 37, 29, 31), layout, dtype, device)
    b = torch.randn(37, dtype=dtype, device=device)
    grad_out = torch.randn(x.shape, dtype=dtype, device=device)
    y, gx, gb = grads(gan_kernels.bias_act, x, b, grad_out, act=act, clamp=1.5)
    y_ref, gx_ref, gb_ref = grads(reference.bias_act, x, b, grad_out, act=act, clamp=1.5)
    assert_close(y, y_ref)
    assert_close(gx, gx_ref)
    # dL/db sums 2697 terms: only float64 keeps their last-bit differences below the tolerance.
    if dtype == torch.float64:
        assert_close(gb, gb_ref)


@pytest.mark.skipif(_backend.IMPL == "reference", reason="the reference's bias gradient is torch's sum")
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_a_one_channel_bias_gets_the_same_bits_on_any_thread_count(layout):
    """dL/db of one channel (a PatchGAN head: conv to 1 channel) sums every element to one value, which
    torch's sum splits by the thread count from 32K elements on; dL/db changed in its last bits
    between 1, 2 and 3 threads, in the backward and in the double backward."""
    torch.manual_seed(11)
    x0 = make_4d((64, 1, 30, 30), layout, torch.float32)
    b0 = torch.randn(1)
    up, w = torch.randn(x0.shape), torch.randn(x0.shape)

    def second_order():
        x, b = x0.clone().requires_grad_(), b0.clone().requires_grad_()
        y = gan_kernels.bias_act(x, b, act="swish")
        gx, gb = torch.autograd.grad(y, (x, b), up, create_graph=True)
        return [y.detach(), gx.detach(), gb.detach(), *torch.autograd.grad(gx, (x, b), w)]

    assert_same_bits(on_thread_counts(second_order))


NAN, INF = float("nan"), float("inf")
EDGE_INPUTS = [NAN, INF, -INF, 0.0, -0.0, 1e4, -1e4, 30.0, -30.0, 0.5]


def _derivative_at_infinity(act, sign):
    """act'(+-inf) as the formula gives it: swish's s (1 + v (1 - s)) has inf * 0 at both ends: NaN."""
    if act == "swish":
        return NAN
    if act in ("linear", "lrelu"):
        return 1.0 if sign > 0 else reference.bias_act_defaults(act)[0] or 1.0
    if act in ("relu", "elu", "softplus"):
        return 1.0 if sign > 0 else 0.0
    if act == "selu":
        return 1.0507009873554804934193349852946 if sign > 0 else 0.0
    return 0.0  # tanh, sigmoid


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("clamp", [None, 2.0])
def test_nan_and_infinity_follow_the_definition(device, dtype, act, clamp):
    """README "NaN and infinity": a NaN input gives a NaN output and a NaN gradient (every act but
    linear without a clamp, whose gradient gain * dL/dy does not depend on x); an infinite input gives
    the formula's limit, and the clamp zeroes the gradient outside [-clamp, clamp] as torch.clamp
    does. Checked against these rules, not against torch's kernels, whose NaN handling depends on
    the CPU."""
    x = torch.tensor(EDGE_INPUTS * 2, dtype=dtype, device=device).reshape(2, len(EDGE_INPUTS))
    b = torch.zeros(len(EDGE_INPUTS), dtype=dtype, device=device)
    y, gx, _ = grads(gan_kernels.bias_act, x, b, torch.ones_like(x), act=act, clamp=clamp)
    _, gain = reference.bias_act_defaults(act)
    assert y[:, 0].isnan().all()
    if act == "linear" and clamp is None:
        assert (gx[:, 0] == gain).all()
    else:
        assert gx[:, 0].isnan().all()
    for column, sign in ((1, 1), (2, -1)):
        want = _derivative_at_infinity(act, sign) * gain
        if clamp is not None and not math.isnan(want):
            # +-inf maps to act(+-inf) * gain; outside the clamp range the gradient is 0.
            limit = reference.bias_act(torch.tensor([sign * INF], dtype=torch.float64), act=act).item()
            if abs(limit * gain) > clamp:
                want = 0.0
        # want is exact; the gradient is rounded once to dtype.
        torch.testing.assert_close(
            gx[:, column].double().cpu(),
            torch.full((2,), want, dtype=torch.float64),
            equal_nan=True,
            rtol=torch.finfo(dtype).eps,
            atol=0,
        )
    if act == "relu":
        assert (y[:, 2] == 0).all() and (gx[:, 2] == 0).all()  # relu(-inf) = 0, not -inf * 0
    # Finite inputs: the reference, whose torch kernels agree on every CPU away from NaN.
    y_ref, gx_ref, _ = grads(reference.bias_act, x[:, 3:], b[3:], torch.ones_like(x[:, 3:]), act=act, clamp=clamp)
    torch.testing.assert_close(y[:, 3:], y_ref)
    torch.testing.assert_close(gx[:, 3:], gx_ref)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("act", ["relu", "lrelu", "elu", "tanh"])
@pytest.mark.parametrize("clamp", [None, 256.0])
def test_a_nan_sample_stays_visible_in_the_penalty(device, act, clamp):
    # StyleGAN's D layers clamp at 256: a sample gone NaN must still make R1 NaN, not a finite number.
    x = torch.randn(3, 4, 2, 2, device=device)
    x[1, 2, 0, 1] = NAN
    x.requires_grad_()
    y = gan_kernels.bias_act(x, torch.randn(4, device=device), act=act, clamp=clamp)
    (g,) = torch.autograd.grad(y.sum(), x, create_graph=True)
    penalty = gan_kernels.per_sample_penalty(g, 0.0)
    assert penalty[1].isnan() and penalty[[0, 2]].isfinite().all()


@pytest.mark.parametrize("act", ["relu", "lrelu", "elu", "selu"])
def test_every_derivative_of_the_reference_is_nan_at_a_nan_input(act):
    """Its second derivative there was 2 (a square's), finite though the input diverged."""
    x = torch.tensor([NAN, 0.5, -0.5], dtype=torch.float64, requires_grad=True)
    y = reference.bias_act(x, act=act)
    (g,) = torch.autograd.grad(y.sum(), x, create_graph=True)
    (h,) = torch.autograd.grad(g.sum(), x)
    assert g[0].isnan() and h[0].isnan()
    assert g[1:].isfinite().all() and h[1:].isfinite().all()


@pytest.mark.parametrize("device", DEVICES)
def test_low_precision_computes_in_float(device):
    # exp(12) overflows fp16; in float swish(-12) = -7.4e-5 is a normal fp16 number.
    x = torch.full((2, 3), -12.0, device=device, dtype=torch.float16)
    y = gan_kernels.bias_act(x, act="swish", gain=1.0)
    assert (y < 0).all()
    assert_close(y, reference.bias_act(x.double(), act="swish", gain=1.0).half(), torch.float16)


@pytest.mark.parametrize("device", DEVICES)
def test_output_keeps_the_memory_format(device):
    x = make_4d((2, 8, 3, 3), "channels_last", torch.float32, device)
    assert gan_kernels.bias_act(x, torch.randn(8, device=device), act="lrelu").stride() == x.stride()


@settings(max_examples=25, deadline=None)
@given(shape=st.lists(st.integers(1, 6), min_size=1, max_size=4), data=st.data())
def test_random_shapes_dims_layouts_and_acts_match_reference(shape, data):
    dim = data.draw(st.integers(-len(shape), len(shape) - 1), label="dim")
    order = data.draw(st.permutations(range(len(shape))), label="memory order")
    act = data.draw(st.sampled_from(ACTS), label="act")
    clamp = data.draw(st.sampled_from([None, 0.8]), label="clamp")
    torch.manual_seed(data.draw(st.integers(0, 2**31 - 1), label="seed"))
    x = torch.randn([shape[i] for i in order], dtype=torch.float64).permute([order.index(i) for i in range(len(shape))])
    b = torch.randn(shape[dim], dtype=torch.float64)
    grad_out = torch.randn(shape, dtype=torch.float64)
    got = grads(gan_kernels.bias_act, x, b, grad_out, dim=dim, act=act, clamp=clamp)
    want = grads(reference.bias_act, x, b, grad_out, dim=dim, act=act, clamp=clamp)
    for g, w in zip(got, want):
        assert_close(g, w)
