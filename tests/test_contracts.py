"""Contracts every public op keeps, driven by one table of ops and their sample inputs
(op_registry.OPS): backend parity (ours against the reference formula), gradcheck and
gradgradcheck, opcheck, a gradient penalty through the op, torch.compile, bad inputs naming the
argument, reaching the compiled ops and forward-mode AD; then contracts of the public API across
ops: torch.compile with dynamic shapes, and scalar arguments in every form PyTorch accepts."""

import numpy as np
import pytest
import torch
import torch.autograd.forward_ad as fwAD
from torch._subclasses import FakeTensorMode
from helpers import (
    COMPILE_BACKEND,
    CUDA_EMULATION,
    DEVICES,
    OPS_REGISTERED,
    assert_close,
    assert_compiled_matches_eager,
    assert_same_penalty_and_grads,
    requires_ops,
)
from op_registry import OPS

import gan_kernels
from gan_kernels import _backend, reference


# Under the CUDA emulation every perturbed call of an entry-by-entry Jacobian runs each CUDA thread as
# a fiber: these cases took 95 of make test's seconds there, 10 in gradcheck's fast mode, which
# compares the numerical and analytical Jacobians along random directions (u^T J v), where a wrong
# entry shows all but surely. The CPU kernels, and the CUDA kernels on a GPU, get the entry-by-entry
# check.
GRADCHECK_FAST_MODE = CUDA_EMULATION


def case_params(contract):
    """(op, case) for every case of every op under ``contract`` (an OpEntry field), as pytest params."""
    return [pytest.param(op, case, id=f"{op.name}-{case.id}") for op in OPS for case in getattr(op, contract)]


def bad_input_params(contract):
    return [pytest.param(op, bad, id=f"{op.name}-{bad.match}") for op in OPS for bad in getattr(op, contract)]


def skip_without_ops(case):
    if case.requires_ops and not OPS_REGISTERED:
        pytest.skip("gan_kernels._C is not built")


def run_call(fn, call):
    """``fn`` on the call's arguments (the differentiable ones as fresh leaves): the output and the
    gradients of those arguments for the upstream gradient ``call.grad_out``."""
    args = list(call.args)
    for index in call.differentiable:
        args[index] = args[index].detach().requires_grad_()
    y = fn(*args, **call.kwargs)
    grads = torch.autograd.grad(y, [args[index] for index in call.differentiable], call.grad_out)
    return y, grads


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op, case", case_params("parity"))
def test_forward_and_backward_match_reference(device, op, case):
    skip_without_ops(case)
    call = case.make(device)
    y, grads = run_call(op.function, call)
    y_ref, grads_ref = run_call(op.reference, call)
    inputs = [call.args[index] for index in call.differentiable]
    assert y.dtype == op.output_dtype(inputs[0].dtype)
    assert [g.dtype for g in grads] == [t.dtype for t in inputs]
    if call.check is not None:
        call.check(call.args, y)
    assert_close(y, y_ref)
    for index, got, want in zip(call.differentiable, grads, grads_ref):
        op.assert_gradient_close(call, index, got, want)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op, case", case_params("gradcheck"))
def test_gradcheck_and_gradgradcheck(device, op, case):
    skip_without_ops(case)
    for fn, inputs in case.make(device):
        assert torch.autograd.gradcheck(fn, inputs, fast_mode=GRADCHECK_FAST_MODE)
        assert torch.autograd.gradgradcheck(fn, inputs, fast_mode=GRADCHECK_FAST_MODE)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op, case", case_params("opcheck"))
def test_opcheck(device, op, case):
    skip_without_ops(case)
    for overload, args in case.make(device):
        torch.library.opcheck(overload, args)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op, case", case_params("penalty"))
def test_penalty_through_the_op_matches_reference(device, op, case):
    """A gradient penalty on a tiny D with the op inside: its value and every parameter gradient
    equal the reference path's, and no op on the path lacks an autograd kernel."""
    skip_without_ops(case)
    assert_same_penalty_and_grads(case.make(device), op.function, op.reference)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op, case", case_params("compile"))
def test_torch_compile_fullgraph(device, op, case):
    skip_without_ops(case)
    call = case.make(device)
    assert_compiled_matches_eager(
        call.fn, call.x, call.eager, call.loss, call.output_tolerance, call.gradient_tolerance
    )


@pytest.mark.parametrize("op, bad", bad_input_params("bad_inputs"))
def test_bad_input_names_the_argument(op, bad):
    with pytest.raises(bad.error, match=bad.match):
        bad.call()


@requires_ops
@pytest.mark.parametrize("op, bad", bad_input_params("bad_op_inputs"))
def test_bad_input_to_the_ops_names_the_argument(op, bad):
    with pytest.raises(bad.error, match=bad.match):
        bad.call()


@requires_ops
@pytest.mark.parametrize(
    "op, bad", [param for param in bad_input_params("bad_op_inputs") if param.values[0].fakes_check_arguments]
)
def test_the_fake_kernels_reject_what_the_ops_reject(op, bad):
    """Traced (torch.compile) or given a meta tensor beside real ones, a call runs the fake kernel: it
    raises the op's error. Without the checks a meta grad beside a CPU x returned uninitialised CPU
    memory from the backward ops' fakes, and a traced call with a wrong grad shape traced silently."""
    with FakeTensorMode(allow_non_fake_inputs=True), pytest.raises(bad.error, match=bad.match):
        bad.call()


@requires_ops
@pytest.mark.skipif(_backend.IMPL == "reference", reason="GAN_KERNELS_IMPL=reference routes to the reference")
@pytest.mark.parametrize("op", OPS, ids=lambda op: op.name)
def test_public_function_runs_the_compiled_ops(op):
    run = op.public_call()
    with torch.autograd.profiler.profile() as prof:
        run()
    assert op.compiled_ops <= {event.name for event in prof.function_events}


FORWARD_AD = [pytest.param(op, id=op.name) for op in OPS if op.forward_ad is not None]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op", FORWARD_AD)
def test_forward_mode_ad_gives_the_true_tangent(device, op):
    torch.manual_seed(1)
    inputs, kwargs = op.forward_ad(device)
    tangents = [torch.randn_like(t) for t in inputs]

    def ours(*tensors):
        return op.function(*tensors, **kwargs)

    def theirs(*tensors):
        return op.reference(*tensors, **kwargs)

    _, tangent = torch.func.jvp(ours, tuple(inputs), tuple(tangents))
    _, want = torch.func.jvp(theirs, tuple(inputs), tuple(tangents))
    torch.testing.assert_close(tangent, want)
    assert tangent.abs().sum() > 0
    # The other forward-mode entry point: torch.autograd.forward_ad's dual tensors.
    with fwAD.dual_level():
        out = ours(*[fwAD.make_dual(t, dt) for t, dt in zip(inputs, tangents)])
        torch.testing.assert_close(fwAD.unpack_dual(out).tangent, want)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op", FORWARD_AD)
def test_forward_over_reverse(device, op):
    # A Hessian-vector product by forward-over-reverse, as torch.func.hessian computes it.
    torch.manual_seed(2)
    x = op.forward_ad(device)[0][0]
    rest, kwargs = op.forward_ad(device)
    rest = rest[1:]

    def loss(f):
        return lambda t: f(t, *rest, **kwargs).square().sum()

    v = torch.randn_like(x)
    _, hvp = torch.func.jvp(torch.func.grad(loss(op.function)), (x,), (v,))
    _, want = torch.func.jvp(torch.func.grad(loss(op.reference)), (x,), (v,))
    torch.testing.assert_close(hvp, want)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op", FORWARD_AD)
def test_reverse_mode_torch_func_transforms(device, op):
    # torch.func.grad, vjp and jacrev of the public functions (README: "Reverse mode to any order,
    # torch.func.grad and vmap of the public functions"): the compiled ops' autograd is C++, which
    # functorch's grad transform refuses, even for an input the transform does not track.
    torch.manual_seed(3)
    inputs, kwargs = op.forward_ad(device)
    x, rest = inputs[0], inputs[1:]

    def loss(f):
        return lambda t: f(t, *rest, **kwargs).square().sum()

    torch.testing.assert_close(torch.func.grad(loss(op.function))(x), torch.func.grad(loss(op.reference))(x))
    torch.testing.assert_close(
        torch.func.jacrev(lambda t: op.function(t, *rest, **kwargs))(x),
        torch.func.jacrev(lambda t: op.reference(t, *rest, **kwargs))(x),
    )
    w = torch.randn((), dtype=x.dtype, device=device)
    torch.testing.assert_close(
        torch.func.grad(lambda s: (op.function(x, *rest, **kwargs) * s).sum())(w),
        op.reference(x, *rest, **kwargs).sum(),
    )


@pytest.mark.parametrize("device", DEVICES)
def test_compile_with_dynamic_shapes(device):
    # Symbolic scalars reach the argument checks under dynamic=True: they must trace, not fail.
    model = torch.nn.Sequential(
        gan_kernels.nn.EqualizedConv2d(4, 6, 3, activation="lrelu", conv_clamp=256.0),
        gan_kernels.nn.PixelNorm(),
        gan_kernels.nn.MinibatchStd(2),
    ).to(device)

    def step(x, eps, clamp):
        y = model(x)
        return gan_kernels.bias_act(gan_kernels.pixel_norm(y, 1, eps), act="lrelu", clamp=clamp)

    compiled = torch.compile(step, fullgraph=True, dynamic=True, backend=COMPILE_BACKEND)
    for n, h, eps, clamp in ((4, 5, 1e-8, 2.0), (6, 7, 1e-6, 3.0)):
        x = torch.randn(n, 4, h, h, device=device)
        torch.testing.assert_close(compiled(x, eps, clamp), step(x, eps, clamp), rtol=1e-5, atol=1e-5)


SCALAR_FORMS = [1.5, np.float32(1.5), np.float64(1.5), torch.tensor(1.5), torch.tensor(1.5, dtype=torch.float64)]


@pytest.mark.parametrize("value", SCALAR_FORMS, ids=lambda v: type(v).__name__ + str(getattr(v, "dtype", "")))
def test_every_scalar_argument_takes_numpy_scalars_and_0d_tensors(value):
    x = torch.randn(4, 3, 2, 2)
    torch.testing.assert_close(gan_kernels.pixel_norm(x, eps=value), gan_kernels.pixel_norm(x, eps=1.5))
    for arg in ("alpha", "gain", "clamp", "scale"):
        torch.testing.assert_close(
            gan_kernels.bias_act(x, act="lrelu", **{arg: value}), gan_kernels.bias_act(x, act="lrelu", **{arg: 1.5})
        )
    torch.testing.assert_close(gan_kernels.per_sample_penalty(x, value), gan_kernels.per_sample_penalty(x, 1.5))
    layer = gan_kernels.nn.EqualizedConv2d(3, 2, 1, conv_clamp=value, lr_multiplier=value)
    assert layer.conv_clamp == 1.5 and layer.bias_gain == 1.5
    assert gan_kernels.nn.PixelNorm(eps=value).eps == 1.5

    def D(t):
        return t.square().sum(dim=[1, 2, 3])

    for penalty in (
        lambda: gan_kernels.penalties.r1(D, x, value),
        lambda: gan_kernels.penalties.r2(D, x, value),
        lambda: gan_kernels.penalties.wgan_gp(D, x, x.flip(0), value),
        lambda: gan_kernels.penalties.dragan(D, x, value, perturbation=value),
        lambda: gan_kernels.penalties.zero_centered_gp(D, x, x.flip(0), value),
        lambda: gan_kernels.gradient_penalty(D(x.requires_grad_()), x, center=value),
    ):
        assert penalty().isfinite().all()


def test_a_scalar_tensor_that_requires_grad_is_refused_not_silently_detached():
    """The ops take their scalars as constants: a 0-d tensor that requires grad would silently get no
    gradient (its value is read with .item()), so it is an error naming the argument; under no_grad,
    where no gradient is asked for, it is an ordinary 0-d tensor."""
    x = torch.randn(4, 3, 2, 2)
    layer = gan_kernels.nn.EqualizedConv2d(3, 2, 1, activation="lrelu")

    def D(t):
        return t.square().sum(dim=[1, 2, 3])

    ops = [
        ("eps", lambda v: gan_kernels.pixel_norm(x, eps=v)),
        ("center", lambda v: gan_kernels.per_sample_penalty(x, v)),
        ("gain", lambda v: layer(x, gain=v)),
    ] + [
        (arg, lambda v, arg=arg: gan_kernels.bias_act(x, act="lrelu", **{arg: v}))
        for arg in ("alpha", "gain", "clamp", "scale")
    ]
    penalties = [  # these take gradients themselves, so they cannot run under no_grad
        ("gamma", lambda v: gan_kernels.penalties.r1(D, x, v)),
        ("weight", lambda v: gan_kernels.penalties.wgan_gp(D, x, x.flip(0), v)),
    ]
    for arg, call in ops + penalties:
        with pytest.raises(TypeError, match=rf"^{arg} is a tensor that requires grad, .*{arg}\.detach\(\)"):
            call(torch.tensor(1.5, requires_grad=True))
    for arg, call in ops:
        with torch.no_grad():
            torch.testing.assert_close(call(torch.tensor(1.5, requires_grad=True)), call(1.5), rtol=0, atol=0)


@pytest.mark.parametrize("value", [4, np.int64(4), np.int32(4), torch.tensor(4)], ids=lambda v: type(v).__name__)
def test_every_count_argument_takes_numpy_ints_and_0d_tensors(value):
    x = torch.randn(8, 6, 2, 2)
    torch.testing.assert_close(gan_kernels.minibatch_std(x, value, 2), gan_kernels.minibatch_std(x, 4, 2))
    torch.testing.assert_close(gan_kernels.minibatch_std(x, 2, value // 2), gan_kernels.minibatch_std(x, 2, 2))
    assert gan_kernels.nn.MinibatchStd(value).group_size == 4
    assert gan_kernels.penalties.LazyRegularizer(value).interval == 4
    assert gan_kernels.penalties.lazy_adam_hyperparameters(0.1, (0.0, 0.99), value)[0] == pytest.approx(0.08)
    assert gan_kernels.nn.EqualizedLinear(value, value).weight.shape == (4, 4)
    # An integer where a real number is taken (an eps, a threshold) is a float, in each of these forms.
    for real in (
        gan_kernels.nn.PixelNorm(eps=value).eps,
        gan_kernels.monitor.Thresholds(collapse_diversity=value).collapse_diversity,
    ):
        assert type(real) is float and real == 4.0
    monitor_state = gan_kernels.StabilityMonitor(torch.nn.Linear(2, 1), seed=value).state_dict()
    assert torch.equal(
        monitor_state["generator"],
        gan_kernels.StabilityMonitor(torch.nn.Linear(2, 1), seed=4).state_dict()["generator"],
    )


def images_and_latents():
    """Images [4, 3, 2, 2] computed from latents [4, 4] that require grad, for a path-length penalty."""
    latents = torch.randn(4, 4, requires_grad=True)
    return latents.reshape(4, 1, 2, 2).expand(4, 3, 2, 2), latents


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: gan_kernels.pixel_norm(torch.randn(2, 3), dim=1.0), TypeError, "dim must be an int, got float"),
        (
            lambda: gan_kernels.bias_act(torch.randn(2, 3), torch.randn(3), dim=1.5),
            TypeError,
            "dim must be an int, got float",
        ),
        (
            lambda: gan_kernels.minibatch_std(torch.randn(4, 2, 1, 1), 2**63),
            ValueError,
            r"group_size=9223372036854775808 is too large",
        ),
        (
            lambda: gan_kernels.minibatch_std(torch.randn(4, 2, 1, 1), 2.0),
            TypeError,
            "group_size must be an int, got float",
        ),
        (
            lambda: gan_kernels.minibatch_std(torch.randn(4, 2, 1, 1), True),
            TypeError,
            "group_size must be an int, got bool",
        ),
        (lambda: gan_kernels.nn.EqualizedLinear(0, 5), ValueError, "in_features must be >= 1, got 0"),
        (lambda: gan_kernels.nn.EqualizedConv2d(0, 5, 3), ValueError, "in_channels must be >= 1, got 0"),
        (lambda: gan_kernels.nn.EqualizedConv2d(2, 5, 0), ValueError, "kernel_size must be >= 1, got 0"),
        (
            lambda: gan_kernels.nn.EqualizedLinear(2, 5, lr_multiplier=0),
            ValueError,
            "lr_multiplier must be a finite number > 0, got 0.0",
        ),
        (
            lambda: gan_kernels.nn.EqualizedConv2d(2, 5, 3, conv_clamp=float("inf")),
            ValueError,
            "conv_clamp must be a finite number >= 0, got inf",
        ),
        (
            lambda: gan_kernels.per_sample_penalty(torch.randn(2, 3), torch.ones(2)),
            TypeError,
            r"center must be a real number or a 0-d real tensor, got a tensor of shape \[2\]",
        ),
        (
            lambda: gan_kernels.per_sample_penalty(torch.randn(2, 3), "1"),
            TypeError,
            "center must be a real number, got str",
        ),
        (lambda: gan_kernels.penalties.LazyRegularizer(0), ValueError, "interval must be >= 1, got 0"),
        (lambda: gan_kernels.penalties.LazyRegularizer(2)(1, "r1"), TypeError, "penalty_fn must be callable, got str"),
        (
            lambda: gan_kernels.penalties.r1(lambda t: t.square().sum(1), torch.randn(4, 3), 1.0, scaler=2.0),
            TypeError,
            "scaler must be a torch.amp.GradScaler, got float",
        ),
        (
            lambda: gan_kernels.penalties.PathLengthRegularizer()(*images_and_latents(), scaler="1024"),
            TypeError,
            "scaler must be a torch.amp.GradScaler, got str",
        ),
        (
            lambda: gan_kernels.penalties.wgan_gp(
                lambda t: t.sum(1), torch.randn(4, 3), torch.randn(4, 3), generator=5
            ),
            TypeError,
            "generator must be a torch.Generator or None, got int",
        ),
        (
            lambda: gan_kernels.penalties.dragan_points(torch.randn(4, 3), generator="seed"),
            TypeError,
            "generator must be a torch.Generator or None, got str",
        ),
        (
            lambda: gan_kernels.penalties.PathLengthRegularizer()(*images_and_latents(), generator=0),
            TypeError,
            "generator must be a torch.Generator or None, got int",
        ),
        (
            lambda: gan_kernels.stabilizers.latent_consistency_penalty(
                lambda z: z, lambda x: x.sum(1), torch.randn(4, 3), 0.1, 1.0, 1.0, generator=1
            ),
            TypeError,
            "generator must be a torch.Generator or None, got int",
        ),
        (
            lambda: gan_kernels.penalties.PathLengthRegularizer(np.float32(1.5)),
            ValueError,
            r"^decay must be in \[0, 1\], got 1.5$",
        ),
        (
            lambda: gan_kernels.StabilityMonitor(torch.nn.Linear(2, 1), seed=2.0),
            TypeError,
            "seed must be an int, got float 2.0",
        ),
        # The layers and helpers outside gan_kernels.ops.
        (
            lambda: gan_kernels.nn.EqualizedLinear(2, 3, bias_init=float("nan")),
            ValueError,
            "bias_init must be a finite number, got nan",
        ),
        (
            lambda: gan_kernels.nn.EqualizedLinear(2, 3)(torch.randn(4, 2), gain="2"),
            TypeError,
            "gain must be a real number, got str '2'",
        ),
        (
            lambda: gan_kernels.nn.EqualizedConv2d(2, 3, 1, conv_clamp=1.0)(torch.randn(4, 2, 3, 3), gain=None),
            TypeError,
            "gain must be a real number, got NoneType None",
        ),
        (lambda: gan_kernels.nn.EqualizedConv2d(2, 3, 1)([1.0]), TypeError, "x must be a torch.Tensor, got list"),
        (
            lambda: gan_kernels.nn.spectral_norm(torch.nn.Linear(2, 3), n_power_iterations=2**63),
            ValueError,
            r"n_power_iterations=9223372036854775808 is too large",
        ),
        (lambda: gan_kernels.nn.spectral_norm_layers(3), TypeError, "model must be a torch.nn.Module, got int"),
        (lambda: gan_kernels.nn.spectral_sigmas([]), TypeError, "model must be a torch.nn.Module, got list"),
        (lambda: gan_kernels.nn.SpectralNorm([[1.0]]), TypeError, "weight must be a torch.Tensor, got list"),
        (
            lambda: gan_kernels.nn.MinibatchDiscrimination(3, 2, 2)(torch.randn(4, 3, device="meta")),
            ValueError,
            "x is on meta but T is on cpu",
        ),
        (
            lambda: gan_kernels.stabilizers.consistency_penalty(lambda t: t.sum(), torch.randn(4, 3), torch.neg, 1.0),
            ValueError,
            r"D\(x\) must have a batch dimension, got a 0-dimensional tensor",
        ),
        (
            lambda: gan_kernels.stabilizers.latent_consistency_penalty(
                lambda z: (z,), lambda t: t, torch.randn(4, 3), 0.1, 1.0, 1.0
            ),
            TypeError,
            r"G\(z\) must be a torch.Tensor, got tuple",
        ),
        (
            lambda: gan_kernels.stabilizers.consistency_penalty(
                lambda t: t, torch.randn(4, 3), torch.neg, 1.0, outputs=torch.randn(4, 3, device="meta")
            ),
            ValueError,
            r"D\(augment\(x\)\) is on cpu but D\(x\) is on meta",
        ),
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
    torch.testing.assert_close(
        gan_kernels.bias_act(x1, b, dim=0, act="tanh"), reference.bias_act(x1, b, dim=0, act="tanh")
    )
    with pytest.raises(IndexError, match="b needs x with at least one dimension"):
        gan_kernels.bias_act(x0, torch.randn(1, dtype=torch.float64, device=device))
