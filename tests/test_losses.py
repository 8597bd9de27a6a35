"""gan_kernels.losses against the textbook formulas (float64), their gradients, stable values at
logits of +-100, reductions, patch-shaped logits and bad input; feature matching and mode seeking
against numpy and closed-form gradients."""

import numpy as np
import pytest
import torch

from gan_kernels import losses

from helpers import TOLERANCES


def log_sigmoid(x):
    return torch.log(torch.sigmoid(x))


def log_one_minus_sigmoid(x):
    return torch.log(1 - torch.sigmoid(x))


# The papers' formulas as written, each term a per-element tensor ([real terms], [fake terms]):
# -log D for D = sigmoid(logit), no stabilisation.
def textbook_discriminator(kind, r, f):
    if kind in ("minimax", "non_saturating"):
        return [-log_sigmoid(r)], [-log_one_minus_sigmoid(f)]
    if kind == "hinge":
        return [torch.clamp(1 - r, min=0)], [torch.clamp(1 + f, min=0)]
    if kind == "wasserstein":
        return [-r], [f]
    if kind == "least_squares":
        return [0.5 * (r - 1) ** 2], [0.5 * f**2]
    if kind == "relativistic_pairing":
        return [-log_sigmoid(r - f)], []
    if kind == "relativistic_average":
        return [-log_sigmoid(r - f.mean(0))], [-log_one_minus_sigmoid(f - r.mean(0))]
    raise ValueError(kind)


def textbook_generator(kind, r, f):
    if kind == "minimax":
        return [], [log_one_minus_sigmoid(f)]
    if kind == "non_saturating":
        return [], [-log_sigmoid(f)]
    if kind in ("hinge", "wasserstein"):
        return [], [-f]
    if kind == "least_squares":
        return [], [0.5 * (f - 1) ** 2]
    if kind == "relativistic_pairing":
        return [], [-log_sigmoid(f - r)]
    if kind == "relativistic_average":
        return [-log_one_minus_sigmoid(r - f.mean(0))], [-log_sigmoid(f - r.mean(0))]
    raise ValueError(kind)


def reduce(terms, reduction):
    real_terms, fake_terms = terms
    every = real_terms + fake_terms
    if reduction == "none":
        return sum(every)
    if reduction == "sum":
        return sum(t.sum() for t in every)
    return sum(t.mean() for t in every)


def logits(shape, seed, scale=3.0):
    generator = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(shape, generator=generator, dtype=torch.float64)).requires_grad_()


SHAPES = [(16,), (6, 1, 2, 2)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("reduction", losses.REDUCTIONS)
@pytest.mark.parametrize("kind", losses.KINDS)
def test_losses_and_gradients_equal_the_textbook_formulas(kind, reduction, shape):
    r, f = logits(shape, 1), logits(shape, 2)
    for ours, textbook in (
        (losses.discriminator_loss(r, f, kind, reduction), reduce(textbook_discriminator(kind, r, f), reduction)),
        (
            losses.generator_loss(f, r, kind=kind, reduction=reduction),
            reduce(textbook_generator(kind, r, f), reduction),
        ),
    ):
        torch.testing.assert_close(ours, textbook, rtol=1e-12, atol=1e-12)
        upstream = torch.randn_like(ours)
        grads = torch.autograd.grad(ours, (r, f), upstream, allow_unused=True, materialize_grads=True)
        expected = torch.autograd.grad(textbook, (r, f), upstream, allow_unused=True, materialize_grads=True)
        for grad, grad_expected in zip(grads, expected):
            torch.testing.assert_close(grad, grad_expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", ["minimax", "non_saturating", "hinge", "wasserstein", "least_squares"])
def test_unpaired_batches_of_different_sizes(kind):
    r, f = logits((10, 3), 3), logits((7, 3), 4)
    torch.testing.assert_close(
        losses.discriminator_loss(r, f, kind), reduce(textbook_discriminator(kind, r, f), "mean"), rtol=1e-12, atol=0
    )


def test_relativistic_average_with_batches_of_different_sizes():
    r, f = logits((10,), 5), logits((7,), 6)
    kind = "relativistic_average"
    expected = reduce(textbook_discriminator(kind, r, f), "mean")
    torch.testing.assert_close(losses.discriminator_loss(r, f, kind), expected)
    torch.testing.assert_close(losses.generator_loss(f, r, kind=kind), reduce(textbook_generator(kind, r, f), "mean"))


# At |logit| = 100, -log(sigmoid) in float32 is inf or 0 where the loss is 100 or 4e-44; the oracle is
# log(1 + e^-x) evaluated with log1p in float64, exact there.
def softplus_oracle(x):
    return torch.log1p(torch.exp(x.double()))


EXTREMES = [100.0, -100.0, 30.0, -30.0]


STABLE_ORACLES = {  # (discriminator, generator) per element, in the log1p form
    "minimax": (lambda r, f: softplus_oracle(-r) + softplus_oracle(f), lambda r, f: -softplus_oracle(f)),
    "non_saturating": (lambda r, f: softplus_oracle(-r) + softplus_oracle(f), lambda r, f: softplus_oracle(-f)),
    "relativistic_pairing": (lambda r, f: softplus_oracle(f - r), lambda r, f: softplus_oracle(r - f)),
    "relativistic_average": (
        lambda r, f: softplus_oracle(f.mean() - r) + softplus_oracle(f - r.mean()),
        lambda r, f: softplus_oracle(r - f.mean()) + softplus_oracle(r.mean() - f),
    ),
}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("kind", list(STABLE_ORACLES))
def test_stable_values_and_gradients_at_logits_of_plus_minus_100(kind, dtype):
    r = torch.tensor(EXTREMES, dtype=dtype, requires_grad=True)
    f = torch.tensor(EXTREMES[::-1], dtype=dtype, requires_grad=True)
    r64, f64 = (t.detach().double().requires_grad_() for t in (r, f))
    tolerance = dict(rtol=1e-6, atol=1e-44) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-300)
    ours = (
        losses.discriminator_loss(r, f, kind, reduction="none"),
        losses.generator_loss(f, r, kind=kind, reduction="none"),
    )
    for loss, oracle in zip(ours, STABLE_ORACLES[kind]):
        expected = oracle(r64, f64)
        torch.testing.assert_close(loss.double(), expected.detach(), **tolerance)
        grads = torch.autograd.grad(loss.sum(), (r, f), allow_unused=True, materialize_grads=True)
        expected_grads = torch.autograd.grad(expected.sum(), (r64, f64), allow_unused=True, materialize_grads=True)
        for grad, grad_expected in zip(grads, expected_grads):
            torch.testing.assert_close(grad.double(), grad_expected, **tolerance)


# Kinds whose loss is linear in the logit (Wasserstein; the hinge generator's -f) have a gradient that
# does not depend on it; every other gradient does, and a NaN logit must make it NaN (README, NaN and
# infinity), whatever torch's relu backward does at NaN on the CPU at hand.
NONLINEAR_IN_REAL = [k for k in losses.KINDS if k != "wasserstein"]
NONLINEAR_IN_FAKE_FOR_G = [k for k in losses.KINDS if k not in ("hinge", "wasserstein")]


@pytest.mark.parametrize("reduction", losses.REDUCTIONS)
@pytest.mark.parametrize("kind", losses.KINDS)
def test_a_nan_logit_makes_its_loss_and_its_gradients_nan(kind, reduction):
    nan = float("nan")
    r = torch.tensor([nan, 0.5, -2.0, 1.5], dtype=torch.float64, requires_grad=True)
    f = torch.tensor([0.3, nan, 1.0, -0.7], dtype=torch.float64, requires_grad=True)
    d_loss = losses.discriminator_loss(r, f, kind, reduction)
    g_loss = losses.generator_loss(f, r, kind=kind, reduction=reduction)
    for loss in (d_loss, g_loss):
        assert loss.isnan().any()
    d_grads = torch.autograd.grad(d_loss.sum(), (r, f), allow_unused=True, materialize_grads=True)
    g_grads = torch.autograd.grad(g_loss.sum(), (r, f), allow_unused=True, materialize_grads=True)
    if kind in NONLINEAR_IN_REAL:
        assert d_grads[0][0].isnan(), d_grads
        assert d_grads[1][1].isnan(), d_grads
    if kind in NONLINEAR_IN_FAKE_FOR_G:
        assert g_grads[1][1].isnan(), g_grads
    if kind in losses.RELATIVISTIC:
        assert g_grads[0][0].isnan(), g_grads
    # Elements that do not meet a NaN keep the textbook gradient.
    if kind not in ("relativistic_average",):
        finite = [2, 3]
        textbook_d = reduce(textbook_discriminator(kind, r, f), reduction)
        expected = torch.autograd.grad(textbook_d.sum(), (r, f), allow_unused=True, materialize_grads=True)
        for grad, grad_expected in zip(d_grads, expected):
            torch.testing.assert_close(grad[finite], grad_expected[finite], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("reduction", losses.REDUCTIONS)
@pytest.mark.parametrize("kind", losses.KINDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_logits_give_the_float64_loss_rounded_once(dtype, kind, reduction):
    """fp16/bf16 logits are computed in float32 and the loss returned in their dtype (DESIGN.md): a
    least-squares term of a logit of 300 is 44700, which float16 holds, though its (r - 1)^2 does not."""
    r = torch.tensor([300.0, 0.5, -1.0, 2.0, 250.0, -3.0], dtype=dtype, requires_grad=True)
    f = torch.tensor([-280.0, 0.5, 1.0, -2.0, 3.0, 120.0], dtype=dtype, requires_grad=True)
    r64, f64 = (t.detach().double().requires_grad_() for t in (r, f))
    for loss_fn in (
        lambda a, b: losses.discriminator_loss(a, b, kind, reduction),
        lambda a, b: losses.generator_loss(b, a, kind=kind, reduction=reduction),
    ):
        ours, expected = loss_fn(r, f), loss_fn(r64, f64)
        assert ours.dtype == dtype
        torch.testing.assert_close(ours, expected.detach().to(dtype), **TOLERANCES[dtype])
        upstream = torch.rand(ours.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        grads = torch.autograd.grad(ours, (r, f), upstream.to(dtype), allow_unused=True, materialize_grads=True)
        expected_grads = torch.autograd.grad(expected, (r64, f64), upstream, allow_unused=True, materialize_grads=True)
        for grad, grad_expected in zip(grads, expected_grads):
            torch.testing.assert_close(grad, grad_expected.to(dtype), **TOLERANCES[dtype])


def test_non_tensor_0d_and_integer_logits_are_rejected_with_the_argument_name():
    with pytest.raises(TypeError, match="real_logits"):
        losses.discriminator_loss([1.0, 2.0], torch.zeros(2), "hinge")
    with pytest.raises(ValueError, match="fake_logits.*0-dimensional"):
        losses.generator_loss(torch.tensor(1.0), kind="hinge")
    with pytest.raises(TypeError, match="fake_logits.*int64"):
        losses.generator_loss(torch.ones(3, dtype=torch.int64), kind="hinge")


def test_bad_kind_and_reduction_name_the_argument_and_value():
    r, f = torch.randn(4), torch.randn(4)
    with pytest.raises(ValueError, match="kind.*'nonsaturating'"):
        losses.discriminator_loss(r, f, "nonsaturating")
    with pytest.raises(ValueError, match="kind.*'ragan'"):
        losses.generator_loss(f, r, kind="ragan")
    with pytest.raises(ValueError, match="reduction.*'avg'"):
        losses.discriminator_loss(r, f, "hinge", reduction="avg")


def test_mismatched_shapes_are_errors_naming_both():
    with pytest.raises(ValueError, match=r"fake_logits has shape \[4, 2\] but real_logits has shape \[4, 3\]"):
        losses.discriminator_loss(torch.randn(4, 3), torch.randn(4, 2), "hinge")
    with pytest.raises(ValueError, match="relativistic_pairing"):
        losses.discriminator_loss(torch.randn(4), torch.randn(5), "relativistic_pairing")
    with pytest.raises(ValueError, match="relativistic_pairing"):
        losses.generator_loss(torch.randn(5), torch.randn(4), kind="relativistic_pairing")
    with pytest.raises(ValueError, match="reduction='none'"):
        losses.discriminator_loss(torch.randn(4), torch.randn(5), "hinge", reduction="none")
    with pytest.raises(TypeError, match="fake_logits has dtype torch.float64"):
        losses.discriminator_loss(torch.randn(4), torch.randn(4, dtype=torch.float64), "hinge")


@pytest.mark.parametrize("kind", losses.KINDS)
def test_a_mean_over_no_logits_is_an_error_naming_the_argument(kind):
    """An empty batch gave a NaN loss (the mean over no elements) without a word, which the optimiser
    then carried into every weight; a sum over none is 0 and stays allowed where no mean is taken."""
    empty, logits = torch.randn(0, 3), torch.randn(4, 3)
    if kind != "relativistic_pairing":  # which pairs the batches, so that their sizes must agree
        with pytest.raises(ValueError, match=r"fake_logits has no elements \(shape \[0, 3\]\)"):
            losses.discriminator_loss(logits, empty, kind)
        with pytest.raises(ValueError, match=r"real_logits has no elements \(shape \[0, 3\]\)"):
            losses.discriminator_loss(empty, logits, kind)
    for real in (empty, None) if kind not in losses.RELATIVISTIC else (empty,):
        with pytest.raises(ValueError, match=r"fake_logits has no elements \(shape \[0, 3\]\)"):
            losses.generator_loss(empty, real, kind=kind)
    if kind == "relativistic_average":  # its batch means are taken whatever the reduction
        with pytest.raises(ValueError, match=r"fake_logits has no elements \(shape \[0, 3\]\)"):
            losses.discriminator_loss(logits, empty, kind, reduction="sum")
        with pytest.raises(ValueError, match=r"real_logits has no elements \(shape \[0, 3\]\)"):
            losses.generator_loss(logits, empty, kind=kind, reduction="sum")
    else:
        real_sum = losses.discriminator_loss(empty, empty, kind, reduction="sum")
        assert real_sum.item() == 0.0
        fake_sum = losses.generator_loss(empty, empty, kind=kind, reduction="sum")
        assert fake_sum.item() == 0.0


@pytest.mark.parametrize("kind", losses.RELATIVISTIC)
def test_relativistic_generator_loss_needs_the_real_logits(kind):
    with pytest.raises(ValueError, match=f"real_logits is required for kind='{kind}'"):
        losses.generator_loss(torch.randn(4), kind=kind)


# --- feature matching and mode seeking ------------------------------------------------------------


def features(shape, seed):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator, dtype=torch.float64).requires_grad_()


@pytest.mark.parametrize("real_shape, fake_shape", [((8, 5), (8, 5)), ((10, 3, 2, 2), (7, 3, 2, 2)), ((6,), (4,))])
def test_feature_matching_value_and_gradients_against_numpy_and_the_closed_form(real_shape, fake_shape):
    real, fake = features(real_shape, 1), features(fake_shape, 2)
    loss = losses.feature_matching(real, fake)
    r, f = real.detach().numpy(), fake.detach().numpy()
    difference = r.mean(axis=0) - f.mean(axis=0)
    assert loss.item() == pytest.approx(float((difference**2).sum()), rel=1e-12)
    # d/d f_real,i = 2 (m_real - m_fake) / N_real; d/d f_fake,i = -2 (m_real - m_fake) / N_fake.
    grad_real, grad_fake = torch.autograd.grad(loss, (real, fake))
    expected_real = torch.as_tensor(2 * difference / len(r)).expand(real_shape)
    expected_fake = torch.as_tensor(-2 * difference / len(f)).expand(fake_shape)
    torch.testing.assert_close(grad_real, expected_real, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(grad_fake, expected_fake, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_feature_matching_of_half_precision_features_is_the_float64_loss_rounded_once(dtype):
    """The batch means were rounded to the features' dtype before their difference was taken: with
    fake features close to the real ones (G doing well), the bfloat16 loss was 6% off and its
    gradient 38%."""
    generator = torch.Generator().manual_seed(0)
    real = torch.randn(16, 4096, generator=generator, dtype=torch.float64)
    fake = real + 1e-2 * torch.randn(16, 4096, generator=generator, dtype=torch.float64)
    real, fake = (t.to(dtype).requires_grad_() for t in (real, fake))
    real64, fake64 = (t.detach().double().requires_grad_() for t in (real, fake))
    ours, expected = losses.feature_matching(real, fake), losses.feature_matching(real64, fake64)
    assert ours.dtype == dtype
    torch.testing.assert_close(ours, expected.detach().to(dtype), **TOLERANCES[dtype])
    grads, expected_grads = torch.autograd.grad(ours, (real, fake)), torch.autograd.grad(expected, (real64, fake64))
    for grad, grad_expected in zip(grads, expected_grads):
        # Gradients of about 1e-4: relative to their size, not within TOLERANCES' atol of zero.
        torch.testing.assert_close(grad, grad_expected.to(dtype), rtol=TOLERANCES[dtype]["rtol"], atol=1e-7)


def test_feature_matching_is_twice_differentiable():
    real, fake = features((5, 3), 3), features((4, 3), 4)
    assert torch.autograd.gradgradcheck(losses.feature_matching, (real, fake))


def test_feature_matching_trains_the_generator_parameters():
    # A linear "generator" f = z W: the loss is ||m_r - mean(z) W||^2, gradient -2 mean(z)^T (m_r - mean(z) W).
    real, z = features((9, 4), 5).detach(), features((6, 3), 6).detach()
    weight = features((3, 4), 7)
    loss = losses.feature_matching(real, z @ weight)
    (grad,) = torch.autograd.grad(loss, weight)
    residual = real.mean(0) - z.mean(0) @ weight.detach()
    torch.testing.assert_close(grad, -2 * torch.outer(z.mean(0), residual), rtol=1e-12, atol=1e-15)


def test_feature_matching_bad_inputs_name_the_argument():
    with pytest.raises(ValueError, match=r"fake_features has shape \[4, 2\] but real_features has shape \[4, 3\]"):
        losses.feature_matching(torch.randn(4, 3), torch.randn(4, 2))
    with pytest.raises(ValueError, match="real_features.*0-dimensional"):
        losses.feature_matching(torch.tensor(1.0), torch.randn(4))
    with pytest.raises(TypeError, match="fake_features.*int64"):
        losses.feature_matching(torch.randn(4), torch.ones(4, dtype=torch.int64))
    with pytest.raises(TypeError, match="real_features must be a torch.Tensor, got list"):
        losses.feature_matching([1.0, 2.0], torch.randn(2))
    with pytest.raises(TypeError, match="fake_features has dtype torch.float64 but real_features has dtype"):
        losses.feature_matching(torch.randn(4), torch.randn(4, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"fake_features has no samples \(shape \[0, 3\]\)"):
        losses.feature_matching(torch.randn(4, 3), torch.randn(0, 3))


def msgan_transcription(fake_a, fake_b, z_a, z_b, eps):
    """Mao et al.'s code: lz = mean|fake2 - fake1| / mean|z2 - z1|; loss_lz = 1 / (lz + eps), in numpy."""
    lz = np.mean(np.abs(fake_b - fake_a)) / np.mean(np.abs(z_b - z_a))
    return 1 / (lz + eps)


@pytest.mark.parametrize("eps", [1e-5, 0.3])
def test_mode_seeking_equals_the_msgan_formula(eps):
    fake_a, fake_b = features((6, 3, 4, 4), 8), features((6, 3, 4, 4), 9)
    z_a, z_b = features((6, 5), 10), features((6, 5), 11)
    loss = losses.mode_seeking(fake_a, fake_b, z_a, z_b, eps=eps)
    expected = msgan_transcription(*(t.detach().numpy() for t in (fake_a, fake_b, z_a, z_b)), eps)
    assert loss.item() == pytest.approx(expected, rel=1e-12)


def test_mode_seeking_gradients_to_the_generator_parameters():
    # fake = tanh(z W): the gradient of 1/(ratio + eps) with respect to W, written out by the chain rule:
    # d loss = -1/(ratio + eps)^2 * d ratio, d ratio = mean(sign(fa - fb) * (d fa - d fb)) / mean|za - zb|.
    z_a, z_b = features((7, 3), 12).detach(), features((7, 3), 13).detach()
    weight = features((3, 5), 14)
    fake_a, fake_b = torch.tanh(z_a @ weight), torch.tanh(z_b @ weight)
    eps = 1e-5
    loss = losses.mode_seeking(fake_a, fake_b, z_a, z_b, eps=eps)
    (grad,) = torch.autograd.grad(loss, weight)
    with torch.no_grad():
        z_distance = (z_a - z_b).abs().mean()
        ratio = (fake_a - fake_b).abs().mean() / z_distance
        sign = torch.sign(fake_a - fake_b) / (fake_a.numel() * z_distance)
        # d fake / d W through tanh: z^T (upstream * (1 - fake^2)).
        d_ratio = z_a.T @ (sign * (1 - fake_a**2)) - z_b.T @ (sign * (1 - fake_b**2))
        expected = -d_ratio / (ratio + eps) ** 2
    torch.testing.assert_close(grad, expected, rtol=1e-10, atol=1e-14)


def test_mode_seeking_is_twice_differentiable():
    inputs = (features((3, 4), 15), features((3, 4), 16), features((3, 2), 17), features((3, 2), 18))
    assert torch.autograd.gradgradcheck(lambda *t: losses.mode_seeking(*t, eps=1e-5), inputs)


@pytest.mark.parametrize("eps", [np.float32(0.5), np.float64(0.5), torch.tensor(0.5), 0.5])
def test_mode_seeking_takes_eps_in_every_scalar_form(eps):
    fake_a, fake_b, z_a, z_b = (features((4, 2), seed).detach() for seed in range(19, 23))
    expected = msgan_transcription(*(t.numpy() for t in (fake_a, fake_b, z_a, z_b)), 0.5)
    assert losses.mode_seeking(fake_a, fake_b, z_a, z_b, eps=eps).item() == pytest.approx(expected, rel=1e-6)


def test_mode_seeking_bad_inputs_name_the_argument():
    with pytest.raises(ValueError, match=r"fake_a has no elements \(shape \[0, 3\]\)"):
        losses.mode_seeking(torch.randn(0, 3), torch.randn(0, 3), torch.randn(4, 2), torch.randn(4, 2))
    with pytest.raises(ValueError, match=r"z_a has no elements \(shape \[0, 2\]\)"):
        losses.mode_seeking(torch.randn(4, 3), torch.randn(4, 3), torch.randn(0, 2), torch.randn(0, 2))
    fake, z = torch.randn(4, 3), torch.randn(4, 2)
    with pytest.raises(ValueError, match=r"fake_b has shape \[4, 2\] but fake_a has shape \[4, 3\]"):
        losses.mode_seeking(fake, torch.randn(4, 2), z, z)
    with pytest.raises(ValueError, match=r"z_b has shape \[5, 2\] but z_a has shape \[4, 2\]"):
        losses.mode_seeking(fake, fake, z, torch.randn(5, 2))
    with pytest.raises(TypeError, match="z_a must be float64, float32, float16 or bfloat16, got torch.int64"):
        losses.mode_seeking(fake, fake, torch.ones(4, 2, dtype=torch.int64), z)
    with pytest.raises(TypeError, match="fake_b has dtype torch.float64 but fake_a has dtype torch.float32"):
        losses.mode_seeking(fake, fake.double(), z, z)
    with pytest.raises(ValueError, match="eps must be a finite number >= 0, got -1.0"):
        losses.mode_seeking(fake, fake, z, z, eps=-1)
    with pytest.raises(TypeError, match="eps must be a real number, got str"):
        losses.mode_seeking(fake, fake, z, z, eps="1e-5")
