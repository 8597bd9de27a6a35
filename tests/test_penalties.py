"""gan_kernels.penalties: gradient_penalty, the WGAN-GP / R1 / R2 / DRAGAN / zero-centred helpers and
lazy regularisation, against the textbook pure-PyTorch computation on small discriminators."""

import math

import numpy as np
import pytest
import torch
from helpers import DEVICES, TOLERANCES, assert_close, unregistered_autograd_is_an_error

import gan_kernels
from gan_kernels import penalties

SHAPE = (4, 3, 4, 4)
CLASSES = 3


class Conditional(torch.nn.Module):
    """Projection discriminator: D(x, labels, scale=...) = scale * (head(phi(x)) + <embed(labels), phi(x)>)."""

    def __init__(self):
        super().__init__()
        self.features = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 16), torch.nn.Softplus())
        self.head = torch.nn.Linear(16, 1)
        self.embed = torch.nn.Embedding(CLASSES, 16)

    def forward(self, x, labels, scale=1.0):
        phi = self.features(x)
        return scale * (self.head(phi).squeeze(1) + (self.embed(labels) * phi).sum(1))


def make_discriminator(kind):
    torch.manual_seed(100)
    if kind == "mlp":
        d = torch.nn.Sequential(
            torch.nn.Flatten(),
            torch.nn.Linear(48, 16),
            torch.nn.LeakyReLU(0.2),
            torch.nn.Linear(16, 16),
            torch.nn.Softplus(),
            torch.nn.Linear(16, 1),
        )
    elif kind == "conv_pixelnorm":
        d = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1),
            torch.nn.LeakyReLU(0.2),
            gan_kernels.nn.PixelNorm(),
            torch.nn.Conv2d(8, 8, 3, stride=2, padding=1),
            torch.nn.Softplus(),
            torch.nn.Flatten(),
            torch.nn.Linear(8 * 2 * 2, 1),
        )
    elif kind == "patch":  # returns a [N, 1, 2, 2] map: summed per sample
        d = torch.nn.Sequential(
            torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.Tanh(), torch.nn.Conv2d(4, 1, 2, stride=2)
        )
    elif kind == "conditional":
        d = Conditional()
    else:
        raise ValueError(kind)
    return d.double()


D_KINDS = ["mlp", "conv_pixelnorm", "patch", "conditional"]


def d_arguments(kind, n):
    if kind == "conditional":
        return (torch.arange(n) % CLASSES,), {"scale": 0.7}
    return (), {}


def textbook_penalty(D, x, center, d_args, d_kwargs):
    """The usual hand-written penalty: grad of the summed outputs, norm (or squared norm) per sample."""
    x = x.detach().requires_grad_()
    (g,) = torch.autograd.grad(D(x, *d_args, **d_kwargs).sum(), x, create_graph=True)
    g = g.flatten(1)
    return (g.norm(dim=1) - center).square() if center else g.square().sum(1)


def uniform_per_sample(x, generator):
    return torch.rand((x.shape[0],) + (1,) * (x.dim() - 1), dtype=x.dtype, generator=generator)


def textbook(helper, D, real, fake, seed, d_args, d_kwargs):
    """Each helper written out by hand, drawing its randomness in the documented order."""
    gen = torch.Generator().manual_seed(seed)
    if helper == "wgan_gp":
        eps = uniform_per_sample(real, gen)
        return 10.0 * textbook_penalty(D, eps * real + (1 - eps) * fake, 1.0, d_args, d_kwargs).mean()
    if helper == "r1":
        return 5.0 / 2 * textbook_penalty(D, real, 0.0, d_args, d_kwargs).mean()
    if helper == "r2":
        return 0.3 / 2 * textbook_penalty(D, fake, 0.0, d_args, d_kwargs).mean()
    if helper == "dragan":
        noise = torch.rand(real.shape, dtype=real.dtype, generator=gen)
        alpha = uniform_per_sample(real, gen)
        x = real + alpha * (0.5 * real.std(correction=0) * noise)
        return 7.0 * textbook_penalty(D, x, 1.0, d_args, d_kwargs).mean()
    if helper == "zero_centered_gp":
        eps = uniform_per_sample(real, gen)
        return 2.0 * textbook_penalty(D, eps * real + (1 - eps) * fake, 0.0, d_args, d_kwargs).mean()
    raise ValueError(helper)


def ours(helper, D, real, fake, seed, d_args, d_kwargs, **extra):
    gen = torch.Generator().manual_seed(seed)
    kw = dict(d_args=d_args, d_kwargs=d_kwargs, **extra)
    if helper == "wgan_gp":
        return penalties.wgan_gp(D, real, fake, generator=gen, **kw)
    if helper == "r1":
        return penalties.r1(D, real, 5.0, **kw)
    if helper == "r2":
        return penalties.r2(D, fake, 0.3, **kw)
    if helper == "dragan":
        return penalties.dragan(D, real, 7.0, generator=gen, **kw)
    if helper == "zero_centered_gp":
        return penalties.zero_centered_gp(D, real, fake, 2.0, generator=gen, **kw)
    raise ValueError(helper)


HELPERS = ["wgan_gp", "r1", "r2", "dragan", "zero_centered_gp"]


def loss_and_param_grads(loss, D):
    params = [p for p in D.parameters()]
    grads = torch.autograd.grad(loss, params, allow_unused=True, materialize_grads=True)
    return loss.detach(), grads


@pytest.mark.parametrize("kind", D_KINDS)
@pytest.mark.parametrize("helper", HELPERS)
def test_helper_matches_the_textbook_computation(helper, kind):
    D = make_discriminator(kind)
    torch.manual_seed(1)
    real, fake = torch.randn(SHAPE, dtype=torch.float64), torch.randn(SHAPE, dtype=torch.float64)
    d_args, d_kwargs = d_arguments(kind, SHAPE[0])
    with unregistered_autograd_is_an_error():
        loss, grads = loss_and_param_grads(ours(helper, D, real, fake, 7, d_args, d_kwargs), D)
    loss_ref, grads_ref = loss_and_param_grads(textbook(helper, D, real, fake, 7, d_args, d_kwargs), D)
    assert loss.shape == () and loss > 0
    assert_close(loss, loss_ref)
    assert sum(g.abs().sum() for g in grads_ref) > 0
    for got, want in zip(grads, grads_ref):
        assert_close(got, want)


@pytest.mark.parametrize("helper", HELPERS)
def test_a_penalty_backpropagated_alone_gives_every_parameter_a_gradient(helper):
    """A regularisation step of its own (StyleGAN2's Dreg): D's last bias does not change the input
    gradient, and gets zeros, as under DistributedDataParallel (which needs a gradient of every
    parameter) and in StyleGAN2, so an optimiser's momentum moves it alike in one process and many."""
    D = make_discriminator("mlp")
    real, fake = (torch.randn(SHAPE, dtype=torch.float64) for _ in range(2))
    ours(helper, D, real, fake, 3, (), {}).backward()
    assert all(p.grad is not None for p in D.parameters())
    assert torch.equal(D[-1].bias.grad, torch.zeros_like(D[-1].bias))


@pytest.mark.parametrize("helper", HELPERS)
def test_d_args_that_is_not_a_tuple_is_one_argument(helper):
    """``d_args=labels``, as torch.func.functional_call takes its args: the labels were unpacked into
    one argument per sample (a TypeError from D for N > 1)."""
    D = make_discriminator("conditional")
    torch.manual_seed(1)
    real, fake = torch.randn(SHAPE, dtype=torch.float64), torch.randn(SHAPE, dtype=torch.float64)
    labels = torch.arange(SHAPE[0]) % CLASSES
    one = ours(helper, D, real, fake, 7, labels, {"scale": 0.7})
    assert torch.equal(one, ours(helper, D, real, fake, 7, (labels,), {"scale": 0.7}))
    assert torch.equal(one, ours(helper, D, real, fake, 7, [labels], {"scale": 0.7}))


def test_d_kwargs_that_is_not_a_mapping_is_an_error_that_names_it():
    D = make_discriminator("conditional")
    real = torch.randn(SHAPE, dtype=torch.float64)
    labels = torch.arange(SHAPE[0]) % CLASSES
    with pytest.raises(TypeError, match="d_kwargs must be a mapping of D's keyword arguments, got Tensor"):
        penalties.r1(D, real, 1.0, d_args=labels, d_kwargs=labels)


@pytest.mark.parametrize("helper", HELPERS)
def test_zero_gradient_rows_stay_finite(helper):
    torch.manual_seed(2)
    model = make_discriminator("conv_pixelnorm")
    mask = torch.tensor([1.0, 0.0, 1.0, 0.0], dtype=torch.float64)[:, None]

    def D(x):  # samples 1 and 3 do not influence the output: their input gradients are exactly 0
        return model(x) * mask

    real, fake = torch.randn(SHAPE, dtype=torch.float64), torch.randn(SHAPE, dtype=torch.float64)
    loss, grads = loss_and_param_grads(ours(helper, D, real, fake, 3, (), None), model)
    assert torch.isfinite(loss)
    assert all(torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum() for g in grads) > 0


def test_gradient_penalty_reuses_outputs_the_caller_has():
    """StyleGAN's R1: the real logits feed both the main loss and the penalty."""
    D = make_discriminator("conv_pixelnorm")
    torch.manual_seed(3)
    real = torch.randn(SHAPE, dtype=torch.float64).requires_grad_()
    logits = D(real)
    r1 = gan_kernels.gradient_penalty(logits, real, center=0.0)
    assert r1.shape == (SHAPE[0],)
    assert_close(r1, textbook_penalty(D, real, 0.0, (), {}))
    loss = torch.nn.functional.softplus(-logits).mean() + 5.0 * r1.mean()
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in D.parameters())


def test_helpers_leave_the_callers_tensors_alone():
    D = make_discriminator("mlp")
    G = torch.nn.Linear(48, 48).double()
    real = torch.randn(SHAPE, dtype=torch.float64)
    fake = G(torch.randn(4, 48, dtype=torch.float64)).view(SHAPE)  # part of G's graph
    penalties.wgan_gp(D, real, fake).backward()
    penalties.r1(D, real, 1.0).backward()
    assert not real.requires_grad and real.grad is None
    assert G.weight.grad is None  # the penalty trains D only


@pytest.mark.parametrize("helper", HELPERS)
def test_samples_made_under_inference_mode_are_taken(helper):
    """r1 and r2 raised torch's "Setting requires_grad=True on inference tensor" on fakes generated
    under torch.inference_mode, which wgan_gp and dragan took (their points are new tensors)."""
    D = make_discriminator("mlp")
    torch.manual_seed(1)
    real, fake = torch.randn(SHAPE, dtype=torch.float64), torch.randn(SHAPE, dtype=torch.float64)
    with torch.inference_mode():
        real_inf, fake_inf = real.clone(), fake.clone()
    assert torch.equal(ours(helper, D, real_inf, fake_inf, 7, (), None), ours(helper, D, real, fake, 7, (), None))


@pytest.mark.parametrize("device", DEVICES)
def test_grad_scaler_follows_the_amp_recipe(device):
    """Gradient of the scaled outputs, unscaled, then the penalty: the same as without scaling."""
    D = make_discriminator("conv_pixelnorm").to(device)
    torch.manual_seed(4)
    real = torch.randn(SHAPE, dtype=torch.float64, device=device)
    scaler = torch.amp.GradScaler(device, init_scale=2.0**16)
    assert_close(penalties.r1(D, real, 10.0, scaler=scaler), penalties.r1(D, real, 10.0))
    x = real.clone().requires_grad_()
    assert_close(gan_kernels.gradient_penalty(D(x), x, 1.0, scaler=scaler), gan_kernels.gradient_penalty(D(x), x))


@pytest.mark.parametrize("input_dtype", [torch.float32, torch.float16])
def test_grad_scaler_keeps_a_float16_gradient_that_underflows_unscaled(input_dtype):
    """What the recipe is for. A power-of-2 scale round-trips exactly, so the test above passes
    whether or not the scaler is applied; here D computes in float16 and its backward multiplies by
    1e-4 twice: unscaled, dD/dx (1e-8) flushes to 0 in float16 and the penalty is 0; through a scale
    of 2^14 it stays a normal float16 number (1.6e-4), and unscaled in float32 it is 1e-8 again.
    float16 samples (a D in .half()) have a float16 gradient: unscaled in float16 it was 0 again,
    and the penalty with the scaler 0 as without it."""
    c = float(torch.tensor(1e-4, dtype=torch.float16))  # the constant as float16 holds it

    def D(x):
        return (x.half() * c).sum(dim=[1, 2, 3]) * c

    def D_exact(x):
        return (x * c).sum(dim=[1, 2, 3]) * c

    torch.manual_seed(6)
    real = torch.randn(SHAPE).to(input_dtype)
    real_exact = real.double()  # the same values
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**14)
    assert penalties.r1(D, real, 10.0) == 0  # the case needs the scaler
    # Only the float16 rounding of the scaled products (c * 2^14 and its product with c) differs.
    tolerance = dict(rtol=TOLERANCES[torch.float16]["rtol"], atol=0, check_dtype=False)
    torch.testing.assert_close(
        penalties.r1(D, real, 10.0, scaler=scaler), penalties.r1(D_exact, real_exact, 10.0), **tolerance
    )
    x = real.clone().requires_grad_()
    x_exact = real_exact.clone().requires_grad_()
    torch.testing.assert_close(
        gan_kernels.gradient_penalty(D(x), x, 0.0, scaler=scaler),
        gan_kernels.gradient_penalty(D_exact(x_exact), x_exact, 0.0),
        **tolerance,
    )


@pytest.mark.parametrize(
    "scale, match",
    [
        # 0 divided by zero (a ZeroDivisionError naming nothing); Inf and NaN gave a NaN penalty silently.
        (0.0, r"scaler.get_scale\(\) must be nonzero, got 0.0"),
        (math.inf, r"scaler.get_scale\(\) must be a finite number, got inf"),
        (math.nan, r"scaler.get_scale\(\) must be a finite number, got nan"),
    ],
)
def test_a_grad_scaler_whose_scale_is_zero_or_not_finite_is_named(scale, match):
    D = make_discriminator("mlp")
    real = torch.randn(SHAPE, dtype=torch.float64)
    scaler = torch.amp.GradScaler("cpu", init_scale=scale)
    x = real.clone().requires_grad_()
    with pytest.raises(ValueError, match=match):
        gan_kernels.gradient_penalty(D(x), x, 1.0, scaler=scaler)
    with pytest.raises(ValueError, match=match):
        penalties.r1(D, real, 10.0, scaler=scaler)


@pytest.mark.parametrize(
    "scaler",
    [torch.amp.GradScaler("cpu", enabled=False), torch.amp.GradScaler("cpu", init_scale=-4.0)],
    ids=["disabled", "negative"],
)
def test_a_disabled_or_negative_grad_scaler_gives_the_unscaled_penalty(scaler):
    # A disabled scaler's scale is 1.0; a negative scale is unusual but exact, and torch's GradScaler takes it.
    D = make_discriminator("mlp")
    real = torch.randn(SHAPE, dtype=torch.float64)
    assert_close(penalties.r1(D, real, 10.0, scaler=scaler), penalties.r1(D, real, 10.0))


@pytest.mark.parametrize("device", DEVICES)
def test_autocast_path_matches_float32(device):
    low = torch.float16 if device == "cuda" else torch.bfloat16
    torch.manual_seed(5)
    D = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.Softplus(), torch.nn.Flatten(), torch.nn.Linear(16 * 16, 1)
    ).to(device)
    real = torch.randn(SHAPE, device=device)
    fake = torch.randn(SHAPE, device=device)
    scaler = torch.amp.GradScaler(device, init_scale=2.0**10)
    with torch.autocast(device, dtype=low):
        r1_amp = penalties.r1(D, real, 10.0, scaler=scaler)
        gp_amp = penalties.wgan_gp(D, real, fake, scaler=scaler, generator=torch.Generator(device).manual_seed(0))
    r1_fp32 = penalties.r1(D, real, 10.0)
    gp_fp32 = penalties.wgan_gp(D, real, fake, generator=torch.Generator(device).manual_seed(0))
    assert r1_amp.dtype == torch.float32  # the gradient w.r.t. the fp32 input is fp32
    # bfloat16 (the CPU): measured at most 2.3e-3 (R1) and 4.4e-4 (WGAN-GP) relative over 40 seeds of D
    # and data, so two bfloat16 ulps and no atol (R1 is about 0.1: an atol of 1e-3 was 1% of it). float16
    # (a GPU) is unmeasured; its float32 side runs cuDNN's convolution in TF32 (allow_tf32 defaults to
    # True), about 1e-3 relative itself.
    tol = dict(rtol=TOLERANCES[low]["rtol"], atol=0) if low == torch.bfloat16 else dict(rtol=1e-2, atol=1e-4)
    torch.testing.assert_close(r1_amp, r1_fp32, **tol)
    torch.testing.assert_close(gp_amp, gp_fp32, **tol)


@pytest.mark.parametrize("returned", [(torch.tensor(1.0), torch.tensor(2.0)), [1.0], None, "1.0", True])
def test_lazy_regularizer_refuses_a_penalty_that_is_not_a_tensor_or_number(returned):
    """A tuple times the interval repeated it (4 copies of the pair) instead of scaling it."""
    with pytest.raises(TypeError, match="penalty_fn must return the penalty as a tensor or a number"):
        penalties.LazyRegularizer(4)(0, lambda: returned)


def test_lazy_regularizer_applies_every_interval_steps_scaled_by_it():
    lazy = penalties.LazyRegularizer(4)
    calls = []

    def penalty(value):
        calls.append(value)
        return torch.tensor(value)

    results = [lazy(step, penalty, 1.5) for step in range(9)]
    assert calls == [1.5, 1.5, 1.5]
    assert [r is not None for r in results] == [step % 4 == 0 for step in range(9)]
    assert results[4].item() == 6.0
    assert "interval=4" in repr(lazy)


def test_lazy_adam_correction_is_stylegan2s():
    # StyleGAN2, D with R1 every 16 steps: lr 0.0025 and betas (0, 0.99) become lr * 16/17, beta ** (16/17).
    lr, betas = penalties.lazy_adam_hyperparameters(0.0025, (0.0, 0.99), 16)
    assert lr == pytest.approx(0.0025 * 16 / 17)
    assert betas == pytest.approx((0.0, 0.99 ** (16 / 17)))
    assert penalties.LazyRegularizer(16).adam_hyperparameters(0.0025, (0.0, 0.99)) == (lr, betas)


@pytest.mark.parametrize("step", [8, np.int64(8), np.int32(8), torch.tensor(8)], ids=lambda s: type(s).__name__)
def test_lazy_due_takes_a_step_in_every_integer_form(step):
    lazy = penalties.LazyRegularizer(4)
    assert lazy.due(step) is True and lazy.due(step + 1) is False and lazy.due(0) is True


@pytest.mark.parametrize(
    "step, error, match",
    [
        # A bool is an int to Python: due(True) was 1 % 4 == 0, silently False.
        (True, TypeError, "step must be an int, got bool True"),
        (2.0, TypeError, "step must be an int, got float 2.0"),
        (torch.tensor(4.0), TypeError, r"step must be an int, got Tensor tensor\(4\.\)"),
        (-4, ValueError, "step must be >= 0, got -4"),
    ],
    ids=["bool", "float", "float_tensor", "negative"],
)
def test_lazy_due_refuses_a_step_that_is_not_a_nonnegative_int(step, error, match):
    lazy = penalties.LazyRegularizer(4)
    with pytest.raises(error, match=match):
        lazy.due(step)
    with pytest.raises(error, match=match):
        lazy(step, pytest.fail)


@pytest.mark.parametrize(
    "lr, betas, error, match",
    [
        (-1e-3, (0.0, 0.99), ValueError, "lr must be a finite number >= 0, got -0.001"),
        (float("inf"), (0.0, 0.99), ValueError, "lr must be a finite number >= 0, got inf"),
        ("1e-3", (0.0, 0.99), TypeError, "lr must be a real number, got str '1e-3'"),
        (1e-3, (0.0, 1.0), ValueError, r"betas\[1\] must be in \[0, 1\), got 1.0"),
        (1e-3, (-0.5, 0.99), ValueError, r"betas\[0\] must be in \[0, 1\), got -0.5"),
        (1e-3, (0.0, float("nan")), ValueError, r"betas\[1\] must be in \[0, 1\), got nan"),
        (1e-3, 0.99, TypeError, "betas must be a pair of numbers, got float 0.99"),
        (1e-3, (0.9, 0.99, 0.999), ValueError, r"betas must be a pair of numbers, got 3 values: \(0.9, 0.99, 0.999\)"),
        (1e-3, (0.0, "0.99"), TypeError, r"betas\[1\] must be a real number, got str '0.99'"),
    ],
)
def test_lazy_adam_hyperparameters_check_lr_and_betas_as_adam_does(lr, betas, error, match):
    with pytest.raises(error, match=match):
        penalties.lazy_adam_hyperparameters(lr, betas, 4)
    with pytest.raises(error, match=match):
        penalties.LazyRegularizer(4).adam_hyperparameters(lr, betas)


def test_lazy_adam_hyperparameters_take_numpy_scalars_0d_tensors_and_lists():
    assert penalties.lazy_adam_hyperparameters(0, (0.0, 0.99), 4)[0] == 0.0  # torch.optim.Adam takes lr = 0 too
    lr, betas = penalties.lazy_adam_hyperparameters(np.float64(0.0025), [torch.tensor(0.0), np.float64(0.99)], 16)
    assert (lr, betas) == penalties.lazy_adam_hyperparameters(0.0025, (0.0, 0.99), 16)
    assert type(lr) is float and all(type(beta) is float for beta in betas)


def test_lazy_r1_step():
    D = make_discriminator("mlp")
    real = torch.randn(SHAPE, dtype=torch.float64)
    reg = penalties.LazyRegularizer(16)(0, penalties.r1, D, real, 10.0)
    assert_close(reg, 16 * penalties.r1(D, real, 10.0))


def constant_d(x):
    return torch.ones(x.shape[0], dtype=x.dtype)


@pytest.mark.parametrize("as_tensor", [True, False])
def test_dragan_std_replaces_the_batch_std(as_tensor):
    # Under data parallelism the caller passes the whole batch's std (gan_kernels.distributed.global_std).
    D = make_discriminator("mlp")
    real = torch.randn(SHAPE, dtype=torch.float64)
    std = 3.0 * real.std(correction=0)
    got = penalties.dragan(
        D, real, 7.0, std=std if as_tensor else std.item(), generator=torch.Generator().manual_seed(5)
    )
    gen = torch.Generator().manual_seed(5)
    noise = torch.rand(real.shape, dtype=real.dtype, generator=gen)
    alpha = uniform_per_sample(real, gen)
    expected = 7.0 * textbook_penalty(D, real + alpha * (0.5 * std * noise), 1.0, (), {}).mean()
    assert_close(got, expected)
    with_batch_std = penalties.dragan(D, real, 7.0, generator=torch.Generator().manual_seed(5))
    assert not torch.allclose(got, with_batch_std)


@pytest.mark.parametrize(
    "std",
    [torch.tensor([1.7], dtype=torch.float64), torch.full([1, 1, 1, 1, 1], 1.7), torch.tensor(1.7, requires_grad=True)],
    ids=["float64-[1]", "[1,1,1,1,1]", "requires-grad"],
)
def test_dragan_points_take_a_one_element_std_as_the_number(std):
    # A one-element tensor std must act as its value: not broadcast the points to more dims, not
    # promote them to its dtype, not attach them to its graph.
    real = torch.randn(SHAPE, dtype=torch.float32)
    got = penalties.dragan_points(real, 0.5, std, torch.Generator().manual_seed(3))
    want = penalties.dragan_points(real, 0.5, std.item(), torch.Generator().manual_seed(3))
    assert got.shape == real.shape and got.dtype == real.dtype and not got.requires_grad
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize(
    "call, error, match",
    [
        (
            lambda D, r, f: gan_kernels.gradient_penalty(D(r.requires_grad_()), r.detach()),
            ValueError,
            "inputs does not require grad",
        ),
        (
            lambda D, r, f: gan_kernels.gradient_penalty(D(f), r.requires_grad_()),
            ValueError,
            "outputs does not depend on inputs",
        ),
        (
            lambda D, r, f: gan_kernels.gradient_penalty(D(f.requires_grad_()), r.requires_grad_()),
            ValueError,
            "outputs does not depend on inputs",
        ),
        (lambda D, r, f: penalties.r1(constant_d, r, 1.0), ValueError, "outputs does not depend on inputs"),
        (
            lambda D, r, f: gan_kernels.gradient_penalty(D(r.requires_grad_()), r, center=-1.0),
            ValueError,
            "center must be a finite number >= 0, got -1.0",
        ),
        (lambda D, r, f: gan_kernels.gradient_penalty([1.0], r), TypeError, "outputs must be a torch.Tensor"),
        (lambda D, r, f: penalties.r1(D, r.long(), 1.0), TypeError, "real must be float64, float32, float16"),
        (lambda D, r, f: penalties.r2(D, f.long(), 1.0), TypeError, "fake must be float64, float32, float16"),
        (
            lambda D, r, f: penalties.wgan_gp(D, r, f[:2]),
            ValueError,
            r"fake has shape \[2, 3, 4, 4\] but real has shape \[4, 3, 4, 4\]",
        ),
        (
            lambda D, r, f: penalties.zero_centered_gp(D, r, f.float(), 1.0),
            TypeError,
            "fake has dtype torch.float32 but real has dtype torch.float64",
        ),
        (lambda D, r, f: penalties.wgan_gp(D, r, f.to("meta")), ValueError, "fake is on meta but real is on cpu"),
        (lambda D, r, f: penalties.wgan_gp(D, r, f, weight=-10.0), ValueError, "weight must be a finite number >= 0"),
        (lambda D, r, f: penalties.r1(D, r, -1.0), ValueError, "gamma must be a finite number >= 0, got -1.0"),
        (lambda D, r, f: penalties.r2(D, f, float("nan")), ValueError, "gamma must be a finite number >= 0"),
        (
            lambda D, r, f: penalties.dragan(D, r, 10.0, perturbation=-0.5),
            ValueError,
            "perturbation must be a finite number >= 0",
        ),
        (
            lambda D, r, f: penalties.dragan(D, r, 10.0, std=-1.0),
            ValueError,
            "std must be a finite number >= 0, got -1.0",
        ),
        (
            lambda D, r, f: penalties.dragan(D, r, 10.0, std=r.std(dim=0)),
            ValueError,
            r"std must be a number or a one-element tensor, got a tensor of shape \[3, 4, 4\]",
        ),
        (
            lambda D, r, f: penalties.dragan(D, r, 10.0, std=torch.tensor(True)),
            TypeError,
            "std must be a real number or a one-element real tensor, got dtype torch.bool",
        ),
        # A mean over no samples: was a NaN loss.
        (lambda D, r, f: penalties.r1(D, r[:0], 1.0), ValueError, r"real has no samples \(shape \[0, 3, 4, 4\]\)"),
        (lambda D, r, f: penalties.r2(D, f[:0], 1.0), ValueError, r"fake has no samples \(shape \[0, 3, 4, 4\]\)"),
        (lambda D, r, f: penalties.wgan_gp(D, r[:0], f[:0]), ValueError, "real has no samples"),
        (lambda D, r, f: penalties.zero_centered_gp(D, r[:0], f[:0], 1.0), ValueError, "real has no samples"),
        (lambda D, r, f: penalties.dragan(D, r[:0], std=1.0), ValueError, "real has no samples"),
        (lambda D, r, f: penalties.r1("D", r, 1.0), TypeError, "D must be callable"),
        # A D returning (logits, features) or a dict was refused as "outputs must be a torch.Tensor".
        (
            lambda D, r, f: penalties.r1(lambda x: (D(x), x), r, 1.0),
            TypeError,
            r"D must return its outputs \(the logits\) as a tensor, got tuple",
        ),
        (
            lambda D, r, f: penalties.wgan_gp(lambda x: {"logits": D(x)}, r, f),
            TypeError,
            r"D must return its outputs \(the logits\) as a tensor, got dict",
        ),
        (lambda D, r, f: penalties.r1(D, r[0, 0, 0, 0], 1.0), ValueError, "real must have a batch dimension"),
        (lambda D, r, f: penalties.LazyRegularizer(0), ValueError, "interval must be >= 1, got 0"),
        (
            lambda D, r, f: penalties.lazy_adam_hyperparameters(1e-3, (0.0, 0.99), 2.5),
            TypeError,
            "interval must be an int, got float",
        ),
    ],
)
def test_bad_input_names_the_argument(call, error, match):
    D = make_discriminator("mlp")
    real, fake = torch.randn(SHAPE, dtype=torch.float64), torch.randn(SHAPE, dtype=torch.float64)
    with pytest.raises(error, match=match):
        call(D, real, fake)


@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
def test_a_penalty_under_no_grad_or_inference_mode_names_the_grad_mode(mode):
    # It used to say "outputs does not depend on inputs", blaming arguments that were fine.
    torch.manual_seed(0)
    D = torch.nn.Linear(3, 1)
    real, fake = torch.randn(4, 3), torch.randn(4, 3)
    expected = "needs autograd, but it was called under " + (
        "torch.no_grad" if mode is torch.no_grad else "torch.inference_mode"
    )
    with mode():
        for call in (
            lambda: penalties.r1(D, real, 1.0),
            lambda: penalties.r2(D, fake, 1.0),
            lambda: penalties.wgan_gp(D, real, fake),
            lambda: penalties.dragan(D, real),
            lambda: penalties.zero_centered_gp(D, real, fake, 1.0),
        ):
            with pytest.raises(RuntimeError, match=expected):
                call()
    x = torch.randn(4, 3, requires_grad=True)
    outputs = D(x)
    with mode(), pytest.raises(RuntimeError, match=expected):
        penalties.gradient_penalty(outputs, x, center=0.0)
