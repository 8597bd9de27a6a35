"""gan_kernels.losses against the textbook formulas (float64), their gradients, stable values at
logits of +-100, reductions, patch-shaped logits and bad input."""
import pytest
import torch

from gan_kernels import losses


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


@pytest.mark.parametrize("kind", losses.RELATIVISTIC)
def test_relativistic_generator_loss_needs_the_real_logits(kind):
    with pytest.raises(ValueError, match=f"real_logits is required for kind='{kind}'"):
        losses.generator_loss(torch.randn(4), kind=kind)
