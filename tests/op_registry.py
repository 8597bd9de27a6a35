"""The table of public ops that tests/test_contracts.py runs every shared contract on, with each
op's sample inputs: backend parity (ours against the reference formula, forward and backward),
gradcheck and gradgradcheck (of the public function and of the backward ops called directly),
opcheck, a gradient penalty through the op, torch.compile, bad inputs naming the argument (the
public function and the dispatcher ops), forward-mode AD and reaching the compiled ops.

Adding an op is one more OpEntry in OPS; what only that op promises goes to its own test file.
Each sample builds its tensors when a test runs, from its own seed, so every run and every device
draws the same inputs.
"""

import dataclasses
from collections.abc import Callable, Sequence
from typing import Optional

import torch
from helpers import (
    FLOAT_DTYPES,
    LAYOUTS,
    SPECTRAL_SHAPES,
    assert_close,
    make_4d,
    normalised_weights,
    random_spectral_layers,
    sum_of_squares,
)

import gan_kernels
from gan_kernels import reference
from gan_kernels.ops.spectral_norm import spectral_norm_one_


def dtype_id(dtype):
    return str(dtype).replace("torch.", "")


def ops():
    """``torch.ops.gan_kernels``: only looked up when a test that needs the compiled ops runs."""
    return torch.ops.gan_kernels


@dataclasses.dataclass(frozen=True)
class Case:
    """One parametrization of a contract test: ``make(device)`` builds what the test takes.
    ``requires_ops``: it calls the dispatcher ops directly (skipped without gan_kernels._C)."""

    id: str
    make: Callable
    requires_ops: bool = False


@dataclasses.dataclass(frozen=True)
class Call:
    """A call ``function(*args, **kwargs)`` whose output gets the upstream gradient ``grad_out``;
    the arguments at ``differentiable`` get gradients. ``check(args, output)``: what else the
    output must satisfy."""

    args: tuple
    kwargs: dict = dataclasses.field(default_factory=dict)
    grad_out: Optional[torch.Tensor] = None
    differentiable: tuple = (0,)
    check: Optional[Callable] = None


@dataclasses.dataclass(frozen=True)
class CompileCall:
    """``torch.compile(fn, fullgraph=True)`` on ``x`` (a tensor or a list of them) must give what
    ``eager`` (default: fn, not compiled) gives: see helpers.assert_compiled_matches_eager."""

    fn: Callable
    x: object
    eager: Optional[Callable] = None
    loss: Callable = sum_of_squares
    output_tolerance: Optional[tuple] = (1e-5, 1e-5)
    gradient_tolerance: Optional[tuple] = (1e-4, 1e-4)


@dataclasses.dataclass(frozen=True)
class BadCall:
    """``call()`` must raise ``error`` with a message matching ``match`` (a regular expression)."""

    call: Callable
    error: type
    match: str


@dataclasses.dataclass(frozen=True)
class OpEntry:
    """An op and its samples, one list per contract (an empty list: the op has no such case here).

    function, reference: the public function and its formula in gan_kernels.reference, taking the
        same arguments (parity, penalty and forward-mode AD call both).
    public_call: ``public_call()`` sets up and returns a function that runs the public function
        (forward and every backward it has); running it must reach every op in ``compiled_ops``.
    parity: Cases making a Call: function and reference agree on the output and the gradients,
        which have the dtypes output_dtype(input dtype) and the input's.
    assert_gradient_close(call, index, got, want): compares the gradient of call.args[index].
    gradcheck: Cases making [(fn, inputs)] that gradcheck and gradgradcheck pass: the public function,
        and the backward ops called directly (requires_ops).
    opcheck: Cases making [(op overload, args)] (a generator may compute later arguments after the
        earlier opchecks ran).
    penalty: Cases making ``penalty_and_grads(impl)`` (impl: function or reference) for
        helpers.assert_same_penalty_and_grads.
    compile: Cases making a CompileCall.
    bad_inputs, bad_op_inputs: BadCalls of the public function(s) and of the dispatcher ops.
    fakes_check_arguments: the fake kernels raise bad_op_inputs' errors too (torch.compile meets
        them while tracing); spectral norm's check only that every tensor is on one device.
    forward_ad: ``forward_ad(device)`` makes (tensors, kwargs): ``function(*tensors, **kwargs)`` has the
        true tangent (jvp and dual tensors) and Hessian-vector product (in the first tensor).
    """

    name: str
    function: Callable
    reference: Callable
    compiled_ops: frozenset
    public_call: Callable
    parity: Sequence[Case] = ()
    output_dtype: Callable = lambda dtype: dtype
    assert_gradient_close: Callable = lambda call, index, got, want: assert_close(got, want)
    gradcheck: Sequence[Case] = ()
    opcheck: Sequence[Case] = ()
    penalty: Sequence[Case] = ()
    compile: Sequence[Case] = ()
    bad_inputs: Sequence[BadCall] = ()
    bad_op_inputs: Sequence[BadCall] = ()
    fakes_check_arguments: bool = True
    forward_ad: Optional[Callable] = None


def bad_calls(function, table):
    """BadCalls of ``function(**kwargs)`` from a table of (kwargs, error, match)."""
    return [BadCall(lambda kwargs=kwargs: function(**kwargs), error, match) for kwargs, error, match in table]


# --- pixel norm -----------------------------------------------------------------------------------


def _pixel_norm_parity(dtype, layout, dim):
    def make(device):
        torch.manual_seed(0)
        x = make_4d((4, 12, 5, 6), layout, dtype, device)
        return Call((x, dim), grad_out=torch.randn(x.shape, dtype=dtype, device=device))

    return Case(f"{dtype_id(dtype)}-{layout}-dim{dim}", make)


def _pixel_norm_gradcheck(layout, dim):
    def make(device):
        torch.manual_seed(1)
        x = make_4d((3, 5, 4, 3), layout, torch.float64, device).requires_grad_()
        return [(lambda t: gan_kernels.pixel_norm(t, dim), (x,))]

    return Case(f"{layout}-dim{dim}", make)


def _pixel_norm_backward_gradcheck(device):
    torch.manual_seed(2)
    x = torch.randn(3, 5, 2, 2, dtype=torch.float64, device=device, requires_grad=True)
    g = torch.randn(3, 5, 2, 2, dtype=torch.float64, device=device, requires_grad=True)
    return [(lambda grad, inp: ops().pixel_norm_backward.default(grad, inp, 1, 1e-8), (g, x))]


def _pixel_norm_opcheck(layout):
    def make(device):
        torch.manual_seed(4)
        x = make_4d((2, 6, 3, 3), layout, torch.float32, device).requires_grad_()
        g = make_4d((2, 6, 3, 3), layout, torch.float32, device).requires_grad_()
        forward, backward = ops().pixel_norm.default, ops().pixel_norm_backward.default
        return [(forward, (x, 1, 1e-8)), (forward, (x, -1, 0.5)), (backward, (g, x, 1, 1e-8))]

    return Case(layout, make, requires_ops=True)


def _pixel_norm_penalty(device):
    """R1 on a tiny D with pixel norm inside."""
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

    return penalty_and_grads


def _pixel_norm_compile(device):
    torch.manual_seed(6)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), gan_kernels.nn.PixelNorm(), torch.nn.LeakyReLU(0.2)
    ).to(device)
    return CompileCall(model, torch.randn(2, 3, 8, 8, device=device))


def _pixel_norm_public_call():
    x = torch.randn(2, 4, 3, 3)
    return lambda: gan_kernels.pixel_norm(x)


PIXEL_NORM_BAD_INPUTS = [
    (dict(x=torch.ones(2, 3, dtype=torch.int64)), TypeError, "x must be float64, float32, float16 or bfloat16"),
    (dict(x=torch.randn(2, 3), dim=2), IndexError, "dim=2 is out of range"),
    (dict(x=torch.randn(2, 3), dim=-3), IndexError, "dim=-3 is out of range"),
    (dict(x=torch.randn(2, 3), eps=-1.0), ValueError, "eps must be a finite number >= 0, got -1.0"),
    (dict(x=torch.randn(2, 3), eps=float("nan")), ValueError, "eps must be a finite number >= 0"),
    (dict(x=[1.0, 2.0]), TypeError, "x must be a torch.Tensor"),
]

PIXEL_NORM_BAD_OP_INPUTS = [
    BadCall(
        lambda: ops().pixel_norm.default(torch.ones(2, 3, dtype=torch.int32), 1, 1e-8), TypeError, "x must be float64"
    ),
    BadCall(lambda: ops().pixel_norm.default(torch.randn(2, 3), 5, 1e-8), IndexError, "dim=5 is out of range"),
    BadCall(
        lambda: ops().pixel_norm.default(torch.randn(2, 3), 1, -0.5),
        ValueError,
        "eps must be a finite number >= 0, got -0.5",
    ),
    BadCall(
        lambda: ops().pixel_norm_backward.default(torch.randn(2, 4), torch.randn(2, 3), 1, 1e-8),
        ValueError,
        r"grad has shape \[2, 4\] but x has shape \[2, 3\]",
    ),
    BadCall(
        lambda: ops().pixel_norm_backward.default(torch.randn(2, 3, dtype=torch.float64), torch.randn(2, 3), 1, 1e-8),
        TypeError,
        "grad has dtype torch.float64 but x has dtype torch.float32",
    ),
    # A meta tensor beside CPU ones sends the call to the fake kernel, which returned uninitialised
    # memory on the CPU; so in every backward op below.
    BadCall(
        lambda: ops().pixel_norm_backward.default(torch.randn(2, 3, device="meta"), torch.randn(2, 3), 1, 1e-8),
        ValueError,
        "grad is on meta but x is on cpu",
    ),
]

PIXEL_NORM = OpEntry(
    name="pixel_norm",
    function=gan_kernels.pixel_norm,
    reference=reference.pixel_norm,
    compiled_ops=frozenset({"gan_kernels::pixel_norm"}),
    public_call=_pixel_norm_public_call,
    parity=[
        _pixel_norm_parity(dtype, layout, dim) for dtype in FLOAT_DTYPES for layout in LAYOUTS for dim in (1, -1, 0)
    ],
    gradcheck=[
        *(_pixel_norm_gradcheck(layout, dim) for layout in LAYOUTS for dim in (1, 3)),
        Case("backward", _pixel_norm_backward_gradcheck, requires_ops=True),
    ],
    opcheck=[_pixel_norm_opcheck(layout) for layout in ("contiguous", "channels_last", "strided")],
    penalty=[Case("r1", _pixel_norm_penalty)],
    compile=[Case("conv_pixel_norm_lrelu", _pixel_norm_compile)],
    bad_inputs=bad_calls(gan_kernels.pixel_norm, PIXEL_NORM_BAD_INPUTS),
    bad_op_inputs=PIXEL_NORM_BAD_OP_INPUTS,
    forward_ad=(lambda d: ([torch.randn(3, 5, 2, 2, dtype=torch.float64, device=d)], {})),
)


# --- minibatch stddev -----------------------------------------------------------------------------


def _minibatch_std_parity(dtype, layout, group_size, num_channels):
    def check(args, y):
        x = args[0]
        assert y.shape == (8, 12 + num_channels, 5, 6)
        assert torch.equal(y[:, :12], x)  # the copy of x is exact

    def make(device):
        torch.manual_seed(0)
        x = make_4d((8, 12, 5, 6), layout, dtype, device)
        grad_out = torch.randn(8, 12 + num_channels, 5, 6, dtype=dtype, device=device)
        return Call((x, group_size, num_channels), grad_out=grad_out, check=check)

    return Case(f"{dtype_id(dtype)}-{layout}-G{group_size}-F{num_channels}", make)


def _minibatch_std_gradcheck(layout, group_size, num_channels):
    def make(device):
        torch.manual_seed(3)
        x = make_4d((6, 4, 3, 2), layout, torch.float64, device).requires_grad_()
        return [(lambda t: gan_kernels.minibatch_std(t, group_size, num_channels), (x,))]

    return Case(f"{layout}-G{group_size}-F{num_channels}", make)


def _minibatch_std_backward_gradcheck(layout):
    def make(device):
        torch.manual_seed(4)
        x = make_4d((4, 6, 2, 3), layout, torch.float64, device).requires_grad_()
        g = make_4d((4, 8, 2, 3), layout, torch.float64, device).requires_grad_()
        return [(lambda grad, inp: ops().minibatch_std_backward.default(grad, inp, 2, 2), (g, x))]

    return Case(f"backward-{layout}", make, requires_ops=True)


def _minibatch_std_double_backward_gradcheck(layout, group_size, num_channels):
    def make(device):
        torch.manual_seed(4)
        x = make_4d((6, 4, 1, 2), layout, torch.float64, device).requires_grad_()
        g = make_4d((6, 4 + num_channels, 1, 2), layout, torch.float64, device).requires_grad_()
        u = make_4d((6, 4, 1, 2), layout, torch.float64, device).requires_grad_()

        def double_backward_op(upstream, grad, inp):
            return ops().minibatch_std_double_backward.default(upstream, grad, inp, group_size, num_channels)

        return [(double_backward_op, (u, g, x))]

    return Case(f"double_backward-{layout}-G{group_size}-F{num_channels}", make, requires_ops=True)


def _minibatch_std_opcheck(layout):
    def make(device):
        torch.manual_seed(6)
        x = make_4d((4, 6, 3, 3), layout, torch.float32, device).requires_grad_()
        g = make_4d((4, 8, 3, 3), layout, torch.float32, device).requires_grad_()
        u = make_4d((4, 6, 3, 3), layout, torch.float32, device).requires_grad_()
        return [
            (ops().minibatch_std.default, (x, 2, 2)),
            (ops().minibatch_std_backward.default, (g, x, 2, 2)),
            (ops().minibatch_std_double_backward.default, (u, g, x, 2, 2)),
        ]

    return Case(layout, make, requires_ops=True)


def _minibatch_std_forward_opcheck(shape, layout):
    """Strided and permuted inputs, G = min(group_size, N) < group_size, an empty batch."""

    def make(device):
        torch.manual_seed(6)
        x = make_4d(shape, layout, torch.float32, device).requires_grad_()
        return [(ops().minibatch_std.default, (x, 4, 1))]

    return Case(f"forward-{'x'.join(map(str, shape))}-{layout}", make, requires_ops=True)


def _minibatch_std_penalty(device):
    """R1 on a tiny D with minibatch stddev in its epilogue."""
    torch.manual_seed(7)
    conv = torch.nn.Conv2d(3, 8, 3, padding=1).double().to(device)
    epilogue = torch.nn.Conv2d(9, 4, 3, padding=1).double().to(device)
    head = torch.nn.Linear(4 * 4 * 4, 1).double().to(device)
    params = [conv.weight, conv.bias, epilogue.weight, head.weight]  # biases after mbstd do not reach dD/dx
    x0 = torch.randn(8, 3, 4, 4, dtype=torch.float64, device=device)

    def penalty_and_grads(mbstd):
        x = x0.clone().requires_grad_()
        h = torch.nn.functional.leaky_relu(conv(x), 0.2)
        logits = head(torch.nn.functional.leaky_relu(epilogue(mbstd(h, 4, 1)), 0.2).flatten(1))
        (g,) = torch.autograd.grad(logits.sum(), x, create_graph=True)
        penalty = g.square().sum(dim=[1, 2, 3]).mean()
        return penalty, torch.autograd.grad(penalty, params)

    return penalty_and_grads


def _minibatch_std_compile(device):
    torch.manual_seed(8)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), gan_kernels.nn.MinibatchStd(4, 2), torch.nn.LeakyReLU(0.2)
    ).to(device)
    return CompileCall(model, torch.randn(8, 3, 4, 4, device=device))


def _minibatch_std_public_call():
    x = torch.randn(4, 4, 3, 3)
    return lambda: gan_kernels.minibatch_std(x)


MINIBATCH_STD_BAD_INPUTS = [
    (dict(x=torch.randn(4, 8, 3)), ValueError, r"x must be a 4-D tensor \[N, C, H, W\], got shape \[4, 8, 3\]"),
    (dict(x=torch.ones(4, 8, 3, 3, dtype=torch.int64)), TypeError, "x must be float64, float32, float16 or bfloat16"),
    (dict(x=torch.randn(4, 8, 3, 3), group_size=0), ValueError, "group_size must be >= 1, got 0"),
    (dict(x=torch.randn(4, 8, 3, 3), num_channels=-1), ValueError, "num_channels must be >= 1, got -1"),
    (
        dict(x=torch.randn(4, 6, 3, 3), num_channels=4),
        ValueError,
        "the number of channels C=6 of x is not a positive multiple of num_channels F=4",
    ),
    (dict(x=torch.randn(4, 0, 3, 3)), ValueError, "the number of channels C=0 of x is not a positive multiple"),
    (
        dict(x=torch.randn(6, 8, 3, 3), group_size=4),
        ValueError,
        "batch size N=6 is not divisible by group size G=4; use a batch size that is a multiple of 4 "
        "or a group_size that divides 6",
    ),
]


def _minibatch_std_op(x, group_size=4, num_channels=1):
    return ops().minibatch_std.default(x, group_size, num_channels)


MINIBATCH_STD_BAD_OP_INPUTS = [
    # The op gives the public function's messages.
    *bad_calls(_minibatch_std_op, MINIBATCH_STD_BAD_INPUTS),
    BadCall(
        lambda: ops().minibatch_std_backward.default(torch.randn(4, 6, 2, 2), torch.randn(4, 6, 2, 2), 4, 1),
        ValueError,
        r"grad has shape \[4, 6, 2, 2\] but the output of minibatch_std has shape \[4, 7, 2, 2\]",
    ),
    BadCall(
        lambda: ops().minibatch_std_backward.default(
            torch.randn(4, 7, 2, 2, dtype=torch.float64), torch.randn(4, 6, 2, 2), 4, 1
        ),
        TypeError,
        "grad has dtype torch.float64 but x has dtype torch.float32",
    ),
    BadCall(
        lambda: ops().minibatch_std_double_backward.default(
            torch.randn(4, 7, 2, 2), torch.randn(4, 7, 2, 2), torch.randn(4, 6, 2, 2), 4, 1
        ),
        ValueError,
        r"upstream has shape \[4, 7, 2, 2\] but x has shape \[4, 6, 2, 2\]",
    ),
    BadCall(
        lambda: ops().minibatch_std_backward.default(
            torch.randn(4, 7, 2, 2, device="meta"), torch.randn(4, 6, 2, 2), 4, 1
        ),
        ValueError,
        "grad is on meta but x is on cpu",
    ),
    BadCall(
        lambda: ops().minibatch_std_double_backward.default(
            torch.randn(4, 6, 2, 2, device="meta"), torch.randn(4, 7, 2, 2), torch.randn(4, 6, 2, 2), 4, 1
        ),
        ValueError,
        "upstream is on meta but x is on cpu",
    ),
]

MINIBATCH_STD = OpEntry(
    name="minibatch_std",
    function=gan_kernels.minibatch_std,
    reference=reference.minibatch_std,
    compiled_ops=frozenset({"gan_kernels::minibatch_std"}),
    public_call=_minibatch_std_public_call,
    parity=[
        _minibatch_std_parity(dtype, layout, group_size, num_channels)
        for dtype in FLOAT_DTYPES
        for layout in LAYOUTS
        for group_size, num_channels in ((4, 1), (2, 3))
    ],
    gradcheck=[
        *(
            _minibatch_std_gradcheck(layout, group_size, num_channels)
            for layout in LAYOUTS
            for group_size, num_channels in ((2, 1), (3, 2), (1, 1))
        ),
        *(_minibatch_std_backward_gradcheck(layout) for layout in ("contiguous", "channels_last")),
        _minibatch_std_double_backward_gradcheck("contiguous", 2, 2),
        _minibatch_std_double_backward_gradcheck("channels_last", 3, 1),
    ],
    opcheck=[
        *(_minibatch_std_opcheck(layout) for layout in ("contiguous", "channels_last")),
        _minibatch_std_forward_opcheck((4, 6, 3, 3), "strided"),
        _minibatch_std_forward_opcheck((3, 4, 2, 2), "permuted"),
        _minibatch_std_forward_opcheck((0, 4, 3, 3), "contiguous"),
    ],
    penalty=[Case("r1", _minibatch_std_penalty)],
    compile=[Case("conv_mbstd_lrelu", _minibatch_std_compile)],
    bad_inputs=[
        *bad_calls(gan_kernels.minibatch_std, MINIBATCH_STD_BAD_INPUTS),
        BadCall(lambda: gan_kernels.minibatch_std([1.0, 2.0]), TypeError, "x must be a torch.Tensor"),
        BadCall(
            lambda: gan_kernels.minibatch_std(torch.randn(4, 4, 2, 2), 2.0),
            TypeError,
            "group_size must be an int, got float",
        ),
    ],
    bad_op_inputs=MINIBATCH_STD_BAD_OP_INPUTS,
    forward_ad=(lambda d: ([torch.randn(4, 6, 2, 3, dtype=torch.float64, device=d)], dict(group_size=2))),
)


# --- bias + activation ----------------------------------------------------------------------------

ACTS = ["linear", "relu", "lrelu", "tanh", "sigmoid", "elu", "selu", "softplus", "swish"]
SMOOTH_ACTS = ["tanh", "sigmoid", "elu", "selu", "softplus", "swish"]
BIAS_ACT_OPTIONS = {"defaults": {}, "gain_clamp_scale": dict(gain=0.7, clamp=0.9, scale=1.3)}
NO_BIAS_OPTIONS = {"defaults": {}, "gain_clamp": dict(gain=1.6, clamp=0.8)}


def assert_bias_gradient_within_rounding(gb, x, b, grad_out, act, scale=1.0, **options):
    """dL/db sums dL/dv over 90 elements per channel. The compiled ops round each dL/dv to the input
    dtype before the sum (as StyleGAN's do), the reference does not: both must lie within one rounding
    of each term (plus the final one) of the exact float sum."""
    v = (x.float() * scale + b.float().reshape(-1, 1, 1)).requires_grad_()
    (grad_v,) = torch.autograd.grad(reference.bias_act(v, act=act, **options), v, grad_out.float())
    exact = grad_v.sum(dim=[0, 2, 3])
    bound = torch.finfo(x.dtype).eps * (grad_v.abs().sum(dim=[0, 2, 3]) + exact.abs())
    assert ((gb.float() - exact).abs() <= bound).all()


def _assert_bias_act_gradient_close(call, index, got, want):
    x = call.args[0]
    if index == 1 and x.dtype in (torch.float16, torch.bfloat16):
        assert_bias_gradient_within_rounding(got, x, call.args[1], call.grad_out, **call.kwargs)
    else:
        assert_close(got, want)


def _bias_act_parity(dtype, act, layout, options_id):
    def make(device):
        torch.manual_seed(0)
        x = make_4d((3, 10, 5, 6), layout, dtype, device)
        b = torch.randn(10, dtype=dtype, device=device)
        grad_out = torch.randn(x.shape, dtype=dtype, device=device)
        return Call((x, b), dict(act=act, **BIAS_ACT_OPTIONS[options_id]), grad_out, differentiable=(0, 1))

    return Case(f"{dtype_id(dtype)}-{act}-{layout}-{options_id}", make)


def _bias_act_parity_without_bias(dtype, act, options_id):
    def make(device):
        torch.manual_seed(10)
        x = make_4d((2, 6, 4, 5), "channels_last", dtype, device)
        grad_out = torch.randn(x.shape, dtype=dtype, device=device)
        return Call((x,), dict(act=act, **NO_BIAS_OPTIONS[options_id]), grad_out)

    return Case(f"no_bias-{dtype_id(dtype)}-{act}-{options_id}", make)


def _bias_act_gradcheck(act, layout):
    def make(device):
        torch.manual_seed(3)
        x = make_4d((2, 4, 2, 2), layout, torch.float64, device).requires_grad_()
        b = torch.randn(4, dtype=torch.float64, device=device, requires_grad=True)
        return [
            (lambda t, bias, options=options: gan_kernels.bias_act(t, bias, act=act, **options), (x, b))
            for options in ({}, dict(gain=0.8, clamp=0.6, scale=1.4))
        ]

    return Case(f"{act}-{layout}", make)


def _bias_act_gradient_ops_gradcheck(act):
    def make(device):
        torch.manual_seed(4)

        def t():
            return torch.randn(2, 3, 2, 2, dtype=torch.float64, device=device, requires_grad=True)

        g, x, u = t(), t(), t()
        b = torch.randn(3, dtype=torch.float64, device=device, requires_grad=True)
        args = (1, act, 0.2, 1.3, 1.1, 0.9)

        def grad_op(grad, inp, bias):
            return ops().bias_act_grad.default(grad, inp, bias, *args, False)

        def grad2_op(upstream, grad, inp, bias):
            return ops().bias_act_grad2.default(upstream, grad, inp, bias, *args)

        return [(grad_op, (g, x, b)), (grad2_op, (u, g, x, b))]

    return Case(f"grad_and_grad2-{act}", make, requires_ops=True)


def _bias_act_opcheck(layout):
    def make(device):
        torch.manual_seed(7)

        def t():
            return make_4d((2, 6, 3, 3), layout, torch.float32, device).requires_grad_()

        x, g, u = t(), t(), t()
        b = torch.randn(6, device=device, requires_grad=True)
        forward, grad, grad2 = ops().bias_act.default, ops().bias_act_grad.default, ops().bias_act_grad2.default
        return [
            (forward, (x, b, 1, "lrelu", 0.2, 1.4, 0.8, 1.0)),
            (forward, (x, None, -1, "swish", 0.0, 1.0, None, 0.5)),
            (grad, (g, x, b, 1, "tanh", 0.0, 1.0, 0.9, 1.2, False)),
            (grad, (g, x, None, 1, "relu", 0.0, 1.4, None, 1.0, True)),
            (grad2, (u, g, x, b, 1, "softplus", 0.0, 1.0, None, 1.0)),
        ]

    return Case(layout, make, requires_ops=True)


def _bias_act_penalty(act):
    def make(device):
        torch.manual_seed(8)
        conv = torch.nn.Conv2d(3, 6, 3, padding=1, bias=False).double().to(device)
        bias = torch.randn(6, dtype=torch.float64, device=device, requires_grad=True)
        head = torch.nn.Linear(6 * 4 * 4, 1).double().to(device)
        # With lrelu, bias only moves the kink and the clamp bounds: it does not reach the input gradient.
        params = [conv.weight, head.weight] + ([bias] if act == "tanh" else [])
        x0 = torch.randn(4, 3, 4, 4, dtype=torch.float64, device=device)

        def penalty_and_grads(fn):
            x = x0.clone().requires_grad_()
            logits = head(fn(conv(x), bias, act=act, clamp=1.5).flatten(1))
            (g,) = torch.autograd.grad(logits.sum(), x, create_graph=True)
            penalty = g.square().sum(dim=[1, 2, 3]).mean()
            return penalty, torch.autograd.grad(penalty, params)

        return penalty_and_grads

    return Case(f"r1-{act}", make)


def _bias_act_compile(device):
    torch.manual_seed(9)
    b = torch.randn(8, device=device)
    return CompileCall(
        lambda x: gan_kernels.bias_act(x, b, act="lrelu", clamp=1.0), torch.randn(2, 8, 4, 4, device=device)
    )


def _bias_act_public_call():
    x = torch.randn(2, 4, 3, 3, requires_grad=True)

    def run():
        y = gan_kernels.bias_act(x, torch.randn(4), act="tanh")
        (g,) = torch.autograd.grad(y.sum(), x, create_graph=True)
        g.sum().backward()

    return run


X = torch.randn(2, 3)
BIAS_ACT_BAD_INPUTS = [
    (dict(x=torch.ones(2, 3, dtype=torch.int64)), TypeError, "x must be float64, float32, float16 or bfloat16"),
    (
        dict(x=X, act="gelu"),
        ValueError,
        "act must be one of linear, relu, lrelu, tanh, sigmoid, elu, selu, softplus, swish, got 'gelu'",
    ),
    (dict(x=X, b=torch.randn(4)), ValueError, r"b must be a 1-D tensor of length x.shape\[1\] = 3, got shape \[4\]"),
    (
        dict(x=X, b=torch.randn(3, 1)),
        ValueError,
        r"b must be a 1-D tensor of length x.shape\[1\] = 3, got shape \[3, 1\]",
    ),
    (
        dict(x=X, b=torch.randn(3, dtype=torch.float64)),
        TypeError,
        "b has dtype torch.float64 but x has dtype torch.float32",
    ),
    (dict(x=X, b=torch.randn(3, device="meta")), ValueError, "b is on meta but x is on cpu"),
    (dict(x=X, b=torch.randn(3), dim=2), IndexError, "dim=2 is out of range"),
    (dict(x=X, b=torch.randn(3), dim=-3), IndexError, "dim=-3 is out of range"),
    (dict(x=X, b=torch.randn(3), dim=1.0), TypeError, "dim must be an int, got float"),
    # Without a bias dim plays no part, but its type is still checked, on both backends.
    (dict(x=X, dim=1.5), TypeError, "dim must be an int, got float 1.5"),
    (dict(x=X, clamp=-0.5), ValueError, "clamp must be a finite number >= 0, got -0.5"),
    (dict(x=X, gain=float("nan")), ValueError, "gain must be a finite number, got nan"),
    (dict(x=X, act="lrelu", alpha=float("inf")), ValueError, "alpha must be a finite number, got inf"),
]


def _bias_act_op(x, b=None, dim=1, act="linear", alpha=0.0, gain=1.0, clamp=None, scale=1.0):
    return ops().bias_act.default(x, b, dim, act, float(alpha), gain, clamp, scale)


BIAS_ACT_BAD_OP_INPUTS = [
    # The op raises the public function's errors. A meta b sends the op to its fake kernel: the device
    # check is only reachable with a GPU. A float dim never reaches the op: the dispatcher rejects it
    # against the schema's int.
    *bad_calls(
        _bias_act_op, [case for case in BIAS_ACT_BAD_INPUTS if "meta" not in case[2] and "got float" not in case[2]]
    ),
    BadCall(
        lambda: ops().bias_act_grad.default(
            torch.randn(2, 4), torch.randn(2, 3), None, 1, "tanh", 0.0, 1.0, None, 1.0, False
        ),
        ValueError,
        r"grad has shape \[2, 4\] but x has shape \[2, 3\]",
    ),
    BadCall(
        lambda: ops().bias_act_grad.default(X, X, None, 1, "tanh", 0.0, 1.0, None, 1.0, True),
        ValueError,
        "ref_is_y needs act linear, relu or lrelu",
    ),
    BadCall(
        lambda: ops().bias_act_grad2.default(X.double(), X, X, None, 1, "tanh", 0.0, 1.0, None, 1.0),
        TypeError,
        "upstream has dtype torch.float64 but x has dtype torch.float32",
    ),
    BadCall(
        lambda: ops().bias_act_grad.default(
            torch.randn(2, 3, device="meta"), X, None, 1, "relu", 0.0, 1.0, None, 1.0, True
        ),
        ValueError,
        "grad is on meta but y is on cpu",
    ),
    BadCall(
        lambda: ops().bias_act_grad2.default(
            torch.randn(2, 3, device="meta"), X, X, None, 1, "tanh", 0.0, 1.0, None, 1.0
        ),
        ValueError,
        "upstream is on meta but x is on cpu",
    ),
]

BIAS_ACT = OpEntry(
    name="bias_act",
    function=gan_kernels.bias_act,
    reference=reference.bias_act,
    compiled_ops=frozenset({"gan_kernels::bias_act", "gan_kernels::bias_act_grad", "gan_kernels::bias_act_grad2"}),
    public_call=_bias_act_public_call,
    parity=[
        *(
            _bias_act_parity(dtype, act, layout, options_id)
            for dtype in FLOAT_DTYPES
            for act in ACTS
            for layout in ("contiguous", "channels_last", "strided")
            for options_id in BIAS_ACT_OPTIONS
        ),
        *(
            _bias_act_parity_without_bias(dtype, act, options_id)
            for dtype in FLOAT_DTYPES
            for act in ACTS
            for options_id in NO_BIAS_OPTIONS
        ),
    ],
    assert_gradient_close=_assert_bias_act_gradient_close,
    gradcheck=[
        *(_bias_act_gradcheck(act, layout) for act in ACTS for layout in ("contiguous", "channels_last")),
        *(_bias_act_gradient_ops_gradcheck(act) for act in SMOOTH_ACTS),
    ],
    opcheck=[_bias_act_opcheck(layout) for layout in ("contiguous", "channels_last")],
    penalty=[_bias_act_penalty(act) for act in ("tanh", "lrelu")],
    compile=[Case("lrelu_clamp", _bias_act_compile)],
    bad_inputs=bad_calls(gan_kernels.bias_act, BIAS_ACT_BAD_INPUTS),
    bad_op_inputs=BIAS_ACT_BAD_OP_INPUTS,
    forward_ad=(
        lambda d: (
            [torch.randn(3, 5, 2, 2, dtype=torch.float64, device=d), torch.randn(5, dtype=torch.float64, device=d)],
            dict(act="elu", clamp=1.5),
        )
    ),
)


# --- per-sample gradient penalty ------------------------------------------------------------------


def _penalty_dtype(dtype):
    """fp16/bf16 gradients give float32 penalties (their sums)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _penalty_parity(dtype, layout, center):
    def check(args, out):
        assert out.shape == (4,)

    def make(device):
        torch.manual_seed(0)
        g = make_4d((4, 6, 5, 7), layout, dtype, device)
        grad_out = torch.randn(4, dtype=_penalty_dtype(dtype), device=device)
        return Call((g, center), grad_out=grad_out, check=check)

    return Case(f"{dtype_id(dtype)}-{layout}-center{center}", make)


def _penalty_gradcheck(layout, center):
    def make(device):
        torch.manual_seed(4)
        g = make_4d((3, 2, 3, 2), layout, torch.float64, device).requires_grad_()
        return [(lambda t: gan_kernels.per_sample_penalty(t, center), (g,))]

    return Case(f"{layout}-center{center}", make)


def _sum_squares(g):
    """The forward op's second output, sum(g_i^2) per sample, in the penalty's dtype."""
    return g.to(_penalty_dtype(g.dtype)).flatten(1).square().sum(1)


def _penalty_backward_gradcheck(center):
    # The sums of squares follow g, as they do when the forward computed them: the backward's
    # derivative with respect to g is the total one.
    def make(device):
        torch.manual_seed(5)
        grad = torch.randn(3, dtype=torch.float64, device=device, requires_grad=True)
        g = torch.randn(3, 2, 2, 2, dtype=torch.float64, device=device, requires_grad=True)

        def backward(grad_, g_):
            return ops().gradient_penalty_backward.default(grad_, g_, _sum_squares(g_.detach()), center)

        return [(backward, (grad, g))]

    return Case(f"backward-center{center}", make, requires_ops=True)


def _penalty_opcheck(layout):
    def make(device):
        torch.manual_seed(8)
        g = make_4d((2, 3, 3, 2), layout, torch.float32, device).requires_grad_()
        grad = torch.randn(2, device=device, requires_grad=True)
        forward, backward = ops().gradient_penalty.default, ops().gradient_penalty_backward.default
        sum_squares = _sum_squares(g.detach())
        return [
            (forward, (g, 1.0)),
            (forward, (g, 0.0)),
            (backward, (grad, g, sum_squares, 1.0)),
            (backward, (grad, g, sum_squares, 0.0)),
        ]

    return Case(layout, make, requires_ops=True)


def _penalty_through_the_op(center):
    def make(device):
        torch.manual_seed(9)
        conv = torch.nn.Conv2d(3, 4, 3, padding=1).double().to(device)
        head = torch.nn.Linear(4 * 4 * 4, 1).double().to(device)
        params = [conv.weight, conv.bias, head.weight]  # head.bias does not reach the input gradient
        x0 = torch.randn(4, 3, 4, 4, dtype=torch.float64, device=device)

        def penalty_and_grads(per_sample):
            x = x0.clone().requires_grad_()
            logits = head(torch.tanh(conv(x)).flatten(1))  # smooth, so conv.bias reaches the gradient
            (g,) = torch.autograd.grad(logits.sum(), x, create_graph=True)
            penalty = per_sample(g, center).mean()
            return penalty, torch.autograd.grad(penalty, params)

        return penalty_and_grads

    return Case(f"center{center}", make)


def _penalty_compile(device):
    torch.manual_seed(10)
    return CompileCall(
        lambda t: gan_kernels.per_sample_penalty(t, 1.0).mean(),
        torch.randn(4, 3, 6, 6, device=device),
        eager=lambda t: reference.per_sample_penalty(t, 1.0).mean(),
        loss=lambda out: out,
        output_tolerance=(1e-5, 1e-6),
        gradient_tolerance=(1e-5, 1e-6),
    )


def _penalty_public_call():
    g = torch.randn(2, 4, 3, 3, requires_grad=True)
    return lambda: gan_kernels.per_sample_penalty(g).sum().backward()


PENALTY_BAD_INPUTS = [
    ((torch.ones(2, 3, dtype=torch.int64),), TypeError, "g must be float64, float32, float16 or bfloat16"),
    (([1.0, 2.0],), TypeError, "g must be a torch.Tensor"),
    ((torch.tensor(1.0),), ValueError, "g must have a batch dimension"),
    ((torch.randn(2, 3), -1.0), ValueError, "center must be a finite number >= 0, got -1.0"),
    ((torch.randn(2, 3), float("inf")), ValueError, "center must be a finite number >= 0, got inf"),
]


def _penalty_backward_op(grad, g, center, sum_squares=None):
    sum_squares = _sum_squares(g) if sum_squares is None else sum_squares
    return ops().gradient_penalty_backward.default(grad, g, sum_squares, center)


PENALTY_BAD_OP_INPUTS = [
    BadCall(
        lambda: ops().gradient_penalty.default(torch.ones(2, 3, dtype=torch.int32), 1.0),
        TypeError,
        "g must be float64, float32, float16 or bfloat16",
    ),
    BadCall(
        lambda: ops().gradient_penalty.default(torch.tensor(1.0), 1.0), ValueError, "g must have a batch dimension"
    ),
    BadCall(
        lambda: ops().gradient_penalty.default(torch.randn(2, 3), -1.0),
        ValueError,
        "center must be a finite number >= 0, got -1.0",
    ),
    BadCall(
        lambda: _penalty_backward_op(torch.randn(3), torch.randn(2, 3), 1.0),
        ValueError,
        r"grad has shape \[3\] but expected \[2\], one value per sample of g",
    ),
    BadCall(
        lambda: _penalty_backward_op(torch.randn(2, 1), torch.randn(2, 3), 1.0),
        ValueError,
        r"grad has shape \[2, 1\] but expected \[2\]",
    ),
    BadCall(
        lambda: _penalty_backward_op(torch.randn(2, dtype=torch.float64), torch.randn(2, 3), 1.0),
        TypeError,
        r"grad has dtype torch.float64 but the penalty of g \(torch.float32\) has dtype torch.float32",
    ),
    BadCall(
        lambda: _penalty_backward_op(torch.randn(2, dtype=torch.float16), torch.randn(2, 3).half(), 1.0),
        TypeError,
        r"grad has dtype torch.float16 but the penalty of g \(torch.float16\) has dtype torch.float32",
    ),
    BadCall(
        lambda: _penalty_backward_op(torch.randn(2), torch.randn(2, 3), 1.0, sum_squares=torch.randn(3)),
        ValueError,
        r"sum_squares has shape \[3\] but expected \[2\], one value per sample of g",
    ),
    BadCall(
        lambda: _penalty_backward_op(
            torch.randn(2), torch.randn(2, 3), 1.0, sum_squares=torch.randn(2, dtype=torch.float64)
        ),
        TypeError,
        r"sum_squares has dtype torch.float64 but the penalty of g \(torch.float32\) has dtype torch.float32",
    ),
    BadCall(
        lambda: _penalty_backward_op(torch.randn(2, device="meta"), torch.randn(2, 3), 1.0),
        ValueError,
        "grad is on meta but g is on cpu",
    ),
    BadCall(
        lambda: _penalty_backward_op(torch.randn(2), torch.randn(2, 3), 1.0, sum_squares=torch.randn(2, device="meta")),
        ValueError,
        "sum_squares is on meta but g is on cpu",
    ),
]

PER_SAMPLE_PENALTY = OpEntry(
    name="per_sample_penalty",
    function=gan_kernels.per_sample_penalty,
    reference=reference.per_sample_penalty,
    compiled_ops=frozenset({"gan_kernels::gradient_penalty", "gan_kernels::gradient_penalty_backward"}),
    public_call=_penalty_public_call,
    parity=[
        _penalty_parity(dtype, layout, center)
        for dtype in FLOAT_DTYPES
        for layout in LAYOUTS
        for center in (0.0, 1.0, 0.5)
    ],
    output_dtype=_penalty_dtype,
    gradcheck=[
        *(
            _penalty_gradcheck(layout, center)
            for layout in ("contiguous", "channels_last", "strided")
            for center in (0.0, 1.0)
        ),
        *(_penalty_backward_gradcheck(center) for center in (0.0, 1.0)),
    ],
    opcheck=[_penalty_opcheck(layout) for layout in ("contiguous", "channels_last", "strided")],
    penalty=[_penalty_through_the_op(center) for center in (0.0, 1.0)],
    compile=[Case("mean_penalty", _penalty_compile)],
    bad_inputs=[
        BadCall(lambda args=args: gan_kernels.per_sample_penalty(*args), error, match)
        for args, error, match in PENALTY_BAD_INPUTS
    ],
    bad_op_inputs=PENALTY_BAD_OP_INPUTS,
    forward_ad=(lambda d: ([torch.randn(3, 4, 2, dtype=torch.float64, device=d)], dict(center=1.0))),
)


# --- spectral norm: batched power iteration and normalisation -------------------------------------


def _spectral_norm_gradcheck(device):
    torch.manual_seed(9)
    weights, us, vs, dims = random_spectral_layers(torch.float64, device, SPECTRAL_SHAPES[:3])
    leaves = tuple(w.requires_grad_() for w in weights)

    def fn(*ws):
        # u, v after the power iteration do not depend on W in PyTorch's graph: only sigma's
        # explicit u^T W v does. Iterating on W's value outside the graph keeps that.
        return tuple(normalised_weights(list(ws), us, vs, dims, steps=0))

    return [(fn, leaves)]


def _spectral_norm_backward_gradcheck(device):
    torch.manual_seed(10)
    weights, us, vs, dims = random_spectral_layers(torch.float64, device, [((3, 2, 2), 0), ((2, 3, 2), 1)])
    grads = [torch.randn_like(w) for w in weights]
    n = len(weights)

    def backward(*tensors):
        gs, ws = list(tensors[:n]), list(tensors[n:])
        sigmas = ops().spectral_norm_power_iteration_.default(
            [w.detach() for w in ws], [u.clone() for u in us], [v.clone() for v in vs], dims, 0, 1e-12
        )
        return tuple(ops().spectral_norm_normalize_backward.default(gs, ws, us, vs, sigmas, dims))

    return [(backward, tuple(t.requires_grad_() for t in grads + weights))]


# The per-layer path's single-weight ops, on one conv weight normalised along dim 1.
ONE_LAYER_SHAPE = ((3, 4, 2, 2), 1)


def _one_layer(dtype, device):
    (weight,), (u,), (v,), (dim,) = random_spectral_layers(dtype, device, [ONE_LAYER_SHAPE])
    return weight, u, v, dim


def _one_sigma(weight, u, v, dim):
    # sigma = u . (W v) from W's value (no iteration), so that gradcheck's perturbed W moves it.
    return ops().spectral_norm_power_iteration_one_.default(weight.detach(), u.clone(), v.clone(), dim, 0, 1e-12)


def _spectral_norm_one_gradcheck(device):
    torch.manual_seed(13)
    weight, u, v, dim = _one_layer(torch.float64, device)

    def fn(w):
        return ops().spectral_norm_normalize_one.default(w, u, v, _one_sigma(w, u, v, dim), dim)

    return [(fn, (weight.requires_grad_(),))]


def _spectral_norm_one_backward_gradcheck(device):
    torch.manual_seed(14)
    weight, u, v, dim = _one_layer(torch.float64, device)

    def backward(g, w):
        return ops().spectral_norm_normalize_one_backward.default(g, w, u, v, _one_sigma(w, u, v, dim), dim)

    return [(backward, (torch.randn_like(weight).requires_grad_(), weight.requires_grad_()))]


def _spectral_norm_opcheck(device):
    power, normalize = ops().spectral_norm_power_iteration_.default, ops().spectral_norm_normalize.default
    torch.manual_seed(11)
    weights, us, vs, dims = random_spectral_layers(torch.float32, device, SPECTRAL_SHAPES[:3])
    yield power, (weights, us, vs, dims, 2, 1e-12)
    sigmas = power(weights, us, vs, dims, 0, 1e-12)  # from the u, v the opcheck above left
    leaves = [w.requires_grad_() for w in weights]
    yield normalize, (leaves, us, vs, sigmas, dims)
    grads = [torch.randn_like(w).requires_grad_() for w in weights]
    yield ops().spectral_norm_normalize_backward.default, (grads, leaves, us, vs, sigmas, dims)
    weight, u, v, dim = _one_layer(torch.float32, device)
    yield ops().spectral_norm_power_iteration_one_.default, (weight, u, v, dim, 2, 1e-12)
    sigma = ops().spectral_norm_power_iteration_one_.default(weight, u, v, dim, 0, 1e-12)
    leaf = weight.requires_grad_()
    yield ops().spectral_norm_normalize_one.default, (leaf, u, v, sigma, dim)
    grad = torch.randn_like(weight).requires_grad_()
    yield ops().spectral_norm_normalize_one_backward.default, (grad, leaf, u, v, sigma, dim)
    # A channels_last weight: W / sigma comes back in its order, as the fake kernels say.
    weight_nhwc = weight.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    yield ops().spectral_norm_normalize_one.default, (weight_nhwc, u, v, sigma, dim)
    yield normalize, ([weight_nhwc, leaves[0]], [u, us[0]], [v, vs[0]], torch.stack([sigma, sigmas[0]]), [dim, dims[0]])
    grad_nhwc = torch.randn_like(weight_nhwc).requires_grad_()
    yield ops().spectral_norm_normalize_one_backward.default, (grad_nhwc, weight_nhwc, u, v, sigma, dim)


def _spectral_norm_penalty(device):
    """R1 on a tiny D whose conv and head weights are spectrally normalised."""
    torch.manual_seed(16)
    weights, us, vs, dims = random_spectral_layers(torch.float64, device, [((4, 3, 3, 3), 0), ((1, 4 * 4 * 4), 0)])
    reference.spectral_norm_power_iteration_(weights, us, vs, dims, 5, 1e-12)  # sigma near the spectral norm
    leaves = [w.requires_grad_() for w in weights]
    x0 = torch.randn(4, 3, 4, 4, dtype=torch.float64, device=device)

    def penalty_and_grads(normalize):
        conv_weight, head_weight = normalize(leaves, us, vs, dims)
        x = x0.clone().requires_grad_()
        h = torch.tanh(torch.nn.functional.conv2d(x, conv_weight, padding=1))
        logits = h.flatten(1) @ head_weight.t()
        (g,) = torch.autograd.grad(logits.sum(), x, create_graph=True)
        penalty = g.square().sum(dim=[1, 2, 3]).mean()
        return penalty, torch.autograd.grad(penalty, leaves)

    return penalty_and_grads


def _spectral_norm_compile(device):
    torch.manual_seed(12)
    normalize = ops().spectral_norm_normalize.default
    weights, us, vs, dims = random_spectral_layers(torch.float32, device, SPECTRAL_SHAPES[:2])
    sigmas = ops().spectral_norm_power_iteration_.default(weights, us, vs, dims, 0, 1e-12)

    def fn(ws):
        return [w.square().sum() for w in normalize(ws, us, vs, sigmas, dims)]

    return CompileCall(fn, weights, loss=sum, output_tolerance=None, gradient_tolerance=None)


def _spectral_norm_one_compile(device):
    """The per-layer path as the layer runs it: power iteration on u, v, then W / sigma."""
    torch.manual_seed(15)
    weight, u, v, dim = _one_layer(torch.float32, device)

    def fn(w):
        return spectral_norm_one_(w, u.clone(), v.clone(), dim, 1, 1e-12)[0]

    return CompileCall(fn, weight, output_tolerance=None, gradient_tolerance=None)


def _spectral_norm_public_call():
    layer = gan_kernels.nn.spectral_norm(torch.nn.Linear(4, 3))
    return lambda: layer.weight.sum().backward()


def spectral_bad_calls(table):
    """BadCalls of ``call(weights, us, vs, dims)`` on two random float32 layers, from a table of
    (call, error, match)."""
    return [
        BadCall(
            lambda call=call: call(*random_spectral_layers(torch.float32, "cpu", SPECTRAL_SHAPES[:2])), error, match
        )
        for call, error, match in table
    ]


def _overlapping(rows, cols):
    """u and v for a [rows, cols] weight, as views of one buffer that share an element."""
    buffer = torch.randn(rows + cols - 1)
    return buffer[:rows], buffer[rows - 1 :]


def _power_op(*args):
    return ops().spectral_norm_power_iteration_.default(*args)


SPECTRAL_NORM_BAD_INPUTS = spectral_bad_calls(
    [
        (
            lambda w, u, v, d: gan_kernels.spectral_norm_power_iteration_(w, u[:1], v, d),
            ValueError,
            "us has 1 entries but weights has 2",
        ),
        (
            lambda w, u, v, d: gan_kernels.spectral_norm_power_iteration_([w[0], w[1].int()], u, v, d),
            TypeError,
            r"weights\[1\] must be float64",
        ),
        (
            lambda w, u, v, d: gan_kernels.spectral_norm_power_iteration_(w, u, v, d, -1),
            ValueError,
            "n_power_iterations must be >= 0, got -1",
        ),
        (
            lambda w, u, v, d: gan_kernels.spectral_norm_power_iteration_(w, u, v, d, 2**63),
            ValueError,
            "n_power_iterations=9223372036854775808 is too large",
        ),
        (
            lambda w, u, v, d: gan_kernels.spectral_norm_power_iteration_(w, u, v, d, 1, float("inf")),
            ValueError,
            "eps must be a finite number, got inf",
        ),
    ]
)

SPECTRAL_NORM_BAD_OP_INPUTS = spectral_bad_calls(
    [
        (
            lambda w, u, v, d: _power_op(w, [u[0], u[0]], v, d, 1, 1e-12),
            ValueError,
            r"us\[1\] must have shape \[4\] to match weights\[1\], got \[5\]",
        ),
        (
            lambda w, u, v, d: _power_op([w[0], w[1].double()], u, v, d, 1, 1e-12),
            TypeError,
            r"weights\[1\] has dtype torch.float64 but weights\[0\] has dtype torch.float32",
        ),
        (
            lambda w, u, v, d: _power_op([w[0].int(), w[1]], u, v, d, 1, 1e-12),
            TypeError,
            r"weights\[0\] must be float64",
        ),
        (
            lambda w, u, v, d: _power_op([u[0], w[1]], u, v, d, 1, 1e-12),
            ValueError,
            r"weights\[0\] must have at least 2 dimensions",
        ),
        (lambda w, u, v, d: _power_op(w, u, v, [0, 4], 1, 1e-12), IndexError, r"dims\[1\]=4 is out of range"),
        (lambda w, u, v, d: _power_op(w, u, v, d, -2, 1e-12), ValueError, "n_power_iterations must be >= 0, got -2"),
        (
            lambda w, u, v, d: _power_op(w, u, v, d, 1, float("nan")),
            ValueError,
            "eps must be a finite number, got nan",
        ),
        (
            lambda w, u, v, d: ops().spectral_norm_normalize.default(w, u, v, torch.ones(3), d),
            ValueError,
            r"sigmas must have shape \[2\]",
        ),
        (
            lambda w, u, v, d: ops().spectral_norm_normalize_backward.default(w[:1], w, u, v, torch.ones(2), d),
            ValueError,
            "grads has 1 tensors but weights has 2",
        ),
        # The single-weight ops name their own arguments.
        (
            lambda w, u, v, d: ops().spectral_norm_power_iteration_one_.default(w[0], u[1], v[0], d[0], 1, 1e-12),
            ValueError,
            r"u must have shape \[5\] to match weight, got \[4\]",
        ),
        (
            lambda w, u, v, d: ops().spectral_norm_power_iteration_one_.default(w[0], u[0], v[0], 2, 1, 1e-12),
            IndexError,
            r"dim=2 is out of range",
        ),
        (
            lambda w, u, v, d: ops().spectral_norm_power_iteration_one_.default(
                w[0], *_overlapping(5, 7), d[0], 1, 1e-12
            ),
            ValueError,
            "u and v share memory",
        ),
        (
            lambda w, u, v, d: ops().spectral_norm_power_iteration_one_.default(w[0], u[0], v[0], d[0], -1, 1e-12),
            ValueError,
            "n_power_iterations must be >= 0, got -1",
        ),
        (
            lambda w, u, v, d: ops().spectral_norm_normalize_one.default(w[0], u[0], v[0], torch.ones(1), d[0]),
            ValueError,
            r"sigma must be a 0-d tensor, got shape \[1\]",
        ),
        (
            lambda w, u, v, d: ops().spectral_norm_normalize_one.default(
                w[0], u[0], v[0], torch.ones((), dtype=torch.float64), d[0]
            ),
            TypeError,
            r"sigma has dtype torch.float64 but weight has dtype torch.float32",
        ),
        (
            lambda w, u, v, d: ops().spectral_norm_normalize_one_backward.default(
                w[1], w[0], u[0], v[0], torch.ones(()), d[0]
            ),
            ValueError,
            r"grad has shape \[4, 3, 3, 2\] but weight has shape \[5, 7\]",
        ),
    ]
)

SPECTRAL_NORM = OpEntry(
    name="spectral_norm",
    # The normalised weights with sigma = u . (W v) from the given u, v: reference.spectral_norm_normalize.
    function=lambda weights, us, vs, dims: normalised_weights(weights, us, vs, dims, steps=0),
    reference=reference.spectral_norm_normalize,
    # The layer's per-layer path; the batched ops: test_spectral_norm.py (one call of each per forward).
    compiled_ops=frozenset(
        {
            "gan_kernels::spectral_norm_power_iteration_one_",
            "gan_kernels::spectral_norm_normalize_one",
            "gan_kernels::spectral_norm_normalize_one_backward",
        }
    ),
    public_call=_spectral_norm_public_call,
    # Parity of the in-place power iteration (u, v, sigmas) and of the normalisation: test_spectral_norm.py
    # (test_ops_match_reference: float32 gradients checked against their error bound).
    gradcheck=[
        Case("normalised_weights", _spectral_norm_gradcheck),
        Case("normalize_backward", _spectral_norm_backward_gradcheck, requires_ops=True),
        Case("normalize_one", _spectral_norm_one_gradcheck, requires_ops=True),
        Case("normalize_one_backward", _spectral_norm_one_backward_gradcheck, requires_ops=True),
    ],
    opcheck=[Case("power_iteration_normalize", _spectral_norm_opcheck, requires_ops=True)],
    penalty=[Case("r1", _spectral_norm_penalty)],
    compile=[
        Case("normalize", _spectral_norm_compile, requires_ops=True),
        Case("one_layer", _spectral_norm_one_compile, requires_ops=True),
    ],
    bad_inputs=SPECTRAL_NORM_BAD_INPUTS,
    bad_op_inputs=SPECTRAL_NORM_BAD_OP_INPUTS,
    fakes_check_arguments=False,
)


# --- minibatch discrimination ------------------------------------------------------------------
# Its own file (tests/test_minibatch_discrimination.py) holds the op's parity, opcheck and penalty
# tests; the registry adds the contracts every op shares.


def _minibatch_discrimination_public_call():
    m = torch.randn(4, 3, 2)
    return lambda: gan_kernels.minibatch_discrimination(m)


def _minibatch_discrimination_gradcheck(device):
    torch.manual_seed(11)
    m = (torch.randn(5, 3, 4, dtype=torch.float64, device=device) / 4).requires_grad_()
    return [(gan_kernels.minibatch_discrimination, (m,))]


MINIBATCH_DISCRIMINATION = OpEntry(
    name="minibatch_discrimination",
    function=gan_kernels.minibatch_discrimination,
    reference=reference.minibatch_discrimination,
    compiled_ops=frozenset({"gan_kernels::minibatch_discrimination"}),
    public_call=_minibatch_discrimination_public_call,
    gradcheck=[Case("public", _minibatch_discrimination_gradcheck)],
    bad_inputs=bad_calls(
        gan_kernels.minibatch_discrimination,
        [
            (
                dict(m=torch.ones(2, 3, 4, dtype=torch.int64)),
                TypeError,
                "m must be float64, float32, float16 or bfloat16",
            ),
            (dict(m=torch.randn(2, 3)), ValueError, r"m must be a 3-D tensor \[N, B, C\]"),
            (dict(m=[1.0]), TypeError, "m must be a torch.Tensor"),
        ],
    ),
    forward_ad=(lambda d: ([torch.randn(5, 3, 4, dtype=torch.float64, device=d) / 4], {})),
)


OPS = [PIXEL_NORM, MINIBATCH_STD, BIAS_ACT, PER_SAMPLE_PENALTY, SPECTRAL_NORM, MINIBATCH_DISCRIMINATION]
