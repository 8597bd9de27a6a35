"""GAN losses in numerically stable forms: every ``-log(sigmoid(x))`` is written ``softplus(-x)`` and
every ``-log(1 - sigmoid(x))`` ``softplus(x)``, so logits of any size give finite values and gradients
(``log(sigmoid(-100))`` is ``-inf`` in float32; ``softplus(100)`` is 100).

Both functions return the loss its network *minimises*. Logits have shape [N] or [N, ...] (a patch
discriminator's map); real and fake logits must agree in every dim but the batch, and in the batch
too where samples are paired (``"relativistic_pairing"``) or ``reduction="none"`` adds them. Empty
logits are an error where a mean is taken (``reduction="mean"``, relativistic_average's batch means).

kind                   discriminator minimises                       generator minimises
minimax                softplus(-r) + softplus(f)                    -softplus(f)   (= log(1 - sigmoid(f)))
non_saturating         softplus(-r) + softplus(f)                    softplus(-f)   (= -log(sigmoid(f)))
hinge                  relu(1 - r) + relu(1 + f)                     -f
wasserstein            f - r                                         -f
least_squares          ((r - 1)^2 + f^2) / 2                         (f - 1)^2 / 2
relativistic_pairing   softplus(f - r), pairs matched by index       softplus(r - f)
relativistic_average   softplus(mean f - r) + softplus(f - mean r)   softplus(mean r - f) + softplus(r - mean f)

(r, f: real and fake logits.) Sources: minimax and non-saturating, Goodfellow et al. 2014; hinge,
Lim & Ye 2017 / Miyato et al. 2018; Wasserstein, Arjovsky et al. 2017; least squares with the
0-1 coding and the paper's factor 1/2, Mao et al. 2017; relativistic average (RaSGAN),
Jolicoeur-Martineau 2018, with the means over the batch dim; relativistic pairing (RpGAN), as R3GAN
(Huang et al. 2024) trains it.

Two generator terms against mode collapse, added to the generator's loss:

feature_matching(real_features, fake_features)   ||mean_i f_real,i - mean_i f_fake,i||^2
mode_seeking(fake_a, fake_b, z_a, z_b, eps)       1 / (mean|fake_a - fake_b| / mean|z_a - z_b| + eps)

Sources: feature matching, Salimans et al. 2016; mode seeking (MSGAN), Mao et al. 2019.
"""

import torch

from . import _checks
from .reference import _compute_dtype, nan_visible

KINDS = (
    "minimax",
    "non_saturating",
    "hinge",
    "wasserstein",
    "least_squares",
    "relativistic_pairing",
    "relativistic_average",
)
REDUCTIONS = ("mean", "sum", "none")
RELATIVISTIC = ("relativistic_pairing", "relativistic_average")

_softplus = torch.nn.functional.softplus


def _hinge(x):
    """``relu(x)`` with a NaN derivative where ``x`` is NaN: torch's relu backward passes the gradient
    there (or not, depending on the CPU's instruction set), which hid a diverged logit."""
    return nan_visible(torch.nn.functional.relu(x), x)


def _check_kind(kind):
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(map(repr, KINDS))}, got {kind!r}")


def _check_reduction(reduction):
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {', '.join(map(repr, REDUCTIONS))}, got {reduction!r}")


def _check_logits(logits, arg):
    _checks.check_floating(logits, arg)
    if logits.dim() == 0:
        raise ValueError(f"{arg} must have a batch dimension ([N] or [N, ...]), got a 0-dimensional tensor")


def _check_pair(real_logits, fake_logits, paired):
    """Same dtype and device; the same shape past the batch dim, and in the batch dim when ``paired``."""
    if fake_logits.device != real_logits.device:
        raise ValueError(f"fake_logits is on {fake_logits.device} but real_logits is on {real_logits.device}")
    if fake_logits.dtype != real_logits.dtype:
        raise TypeError(f"fake_logits has dtype {fake_logits.dtype} but real_logits has dtype {real_logits.dtype}")
    if paired and fake_logits.shape != real_logits.shape:
        raise ValueError(
            f"fake_logits has shape {list(fake_logits.shape)} but real_logits has shape "
            f"{list(real_logits.shape)}; {paired} needs them equal (samples are paired by index)"
        )
    if fake_logits.shape[1:] != real_logits.shape[1:]:
        raise ValueError(
            f"fake_logits has shape {list(fake_logits.shape)} but real_logits has shape "
            f"{list(real_logits.shape)}; they must agree in every dim but the batch"
        )


def _has_elements(t, arg):
    """A mean over no elements is NaN, which a loss would carry into every weight without a word."""
    if t.numel() == 0:
        raise ValueError(f"{arg} has no elements (shape {list(t.shape)}): its mean is undefined")


def _check_means(kind, reduction, **logits):
    """The logits averaged by ``reduction="mean"``, or by relativistic_average's batch means (taken
    whatever the reduction), are not empty."""
    if reduction == "mean" or kind == "relativistic_average":
        for arg, t in logits.items():
            _has_elements(t, arg)


def _in_compute_dtype(*logits):
    """fp16/bf16 logits in float32 (``None`` stays ``None``): a float16 least-squares term
    ``(r - 1)^2 / 2`` of r = 300 overflowed in its square though the term, 44700, fits."""
    return [None if t is None else t.to(_compute_dtype(t)) for t in logits]


def _reduce(terms, reduction):
    """Each term reduced on its own and summed, so real and fake batches may differ in size; with
    ``reduction="none"`` the per-element terms are added (their shapes were checked equal)."""
    if reduction != "none":
        terms = [term.sum() if reduction == "sum" else term.mean() for term in terms]
    total = terms[0]
    for term in terms[1:]:
        total = total + term
    return total


def _pairing_reason(kind, reduction):
    if kind == "relativistic_pairing":
        return "kind='relativistic_pairing'"
    if reduction == "none":
        return "reduction='none'"
    return None


def discriminator_loss(real_logits, fake_logits, kind, reduction="mean"):
    """The discriminator's loss for ``kind`` (one of :data:`KINDS`, see the module docstring) on the
    logits of a real and a fake batch. ``reduction``: ``"mean"`` (each term averaged over its own
    batch, then added), ``"sum"`` or ``"none"`` (per element, real and fake terms added). fp16 and
    bf16 logits are computed in float32; the loss has the logits' dtype."""
    _check_kind(kind)
    _check_reduction(reduction)
    _check_logits(real_logits, "real_logits")
    _check_logits(fake_logits, "fake_logits")
    _check_pair(real_logits, fake_logits, _pairing_reason(kind, reduction))
    _check_means(kind, reduction, real_logits=real_logits, fake_logits=fake_logits)
    r, f = _in_compute_dtype(real_logits, fake_logits)
    if kind in ("minimax", "non_saturating"):
        terms = (_softplus(-r), _softplus(f))
    elif kind == "hinge":
        terms = (_hinge(1 - r), _hinge(1 + f))
    elif kind == "wasserstein":
        terms = (-r, f)
    elif kind == "least_squares":
        terms = ((r - 1).square() / 2, f.square() / 2)
    elif kind == "relativistic_pairing":
        terms = (_softplus(f - r),)
    else:  # relativistic_average
        terms = (_softplus(f.mean(0) - r), _softplus(f - r.mean(0)))
    return _reduce(terms, reduction).to(fake_logits.dtype)


def generator_loss(fake_logits, real_logits=None, *, kind, reduction="mean"):
    """The generator's loss for ``kind`` (one of :data:`KINDS`) on the discriminator's logits of a
    fake batch; the relativistic kinds also need ``real_logits`` (their gradient flows into D's
    real logits only if the caller did not detach them). Other kinds ignore ``real_logits`` but
    still check its shape against ``fake_logits``. ``reduction`` as in :func:`discriminator_loss`."""
    _check_kind(kind)
    _check_reduction(reduction)
    _check_logits(fake_logits, "fake_logits")
    if real_logits is None:
        if kind in RELATIVISTIC:
            raise ValueError(f"real_logits is required for kind={kind!r} (the loss compares fake with real logits)")
    else:
        _check_logits(real_logits, "real_logits")
        _check_pair(real_logits, fake_logits, _pairing_reason(kind, reduction) if kind in RELATIVISTIC else None)
    _check_means(kind, reduction, fake_logits=fake_logits)
    if kind in RELATIVISTIC:
        _check_means(kind, reduction, real_logits=real_logits)
    r, f = _in_compute_dtype(real_logits, fake_logits)
    if kind == "minimax":
        terms = (-_softplus(f),)
    elif kind == "non_saturating":
        terms = (_softplus(-f),)
    elif kind in ("hinge", "wasserstein"):
        terms = (-f,)
    elif kind == "least_squares":
        terms = ((f - 1).square() / 2,)
    elif kind == "relativistic_pairing":
        terms = (_softplus(r - f),)
    else:  # relativistic_average: D's loss with the roles of real and fake swapped
        terms = (_softplus(r - f.mean(0)), _softplus(r.mean(0) - f))
    return _reduce(terms, reduction).to(fake_logits.dtype)


def _check_same_kind(a, b, arg_a, arg_b):
    """``b`` on ``a``'s device, with ``a``'s dtype."""
    if b.device != a.device:
        raise ValueError(f"{arg_b} is on {b.device} but {arg_a} is on {a.device}")
    if b.dtype != a.dtype:
        raise TypeError(f"{arg_b} has dtype {b.dtype} but {arg_a} has dtype {a.dtype}")


def feature_matching(real_features, fake_features):
    """Feature matching (Salimans et al. 2016), the generator's loss

        ||mean_i f_real,i - mean_i f_fake,i||^2

    with the means over the batch (dim 0) taken per feature and the squared norm summed over every
    feature element. ``real_features`` and ``fake_features``: ``[N, ...]`` activations of an
    intermediate layer of D (any shape past the batch dim, the same for both); the batch sizes may
    differ. fp16 and bf16 features are computed in float32; the loss has their dtype. The gradient
    reaches whatever produced either input: detach the real features so that
    the loss trains G only (G's optimiser steps G alone anyway, but D's gradients would accumulate)."""
    _check_logits(real_features, "real_features")
    _check_logits(fake_features, "fake_features")
    _check_same_kind(real_features, fake_features, "real_features", "fake_features")
    if fake_features.shape[1:] != real_features.shape[1:]:
        raise ValueError(
            f"fake_features has shape {list(fake_features.shape)} but real_features has shape "
            f"{list(real_features.shape)}; they must agree in every dim but the batch"
        )
    _checks.has_samples(real_features, "real_features")
    _checks.has_samples(fake_features, "fake_features")
    # In bfloat16 each batch mean is rounded to 8 bits, and once G is close the difference of two
    # rounded means is mostly rounding: the loss and its gradient were off by tens of percent.
    r, f = _in_compute_dtype(real_features, fake_features)
    return (r.mean(0) - f.mean(0)).square().sum().to(fake_features.dtype)


def mode_seeking(fake_a, fake_b, z_a, z_b, eps=1e-5):
    """Mode seeking (MSGAN, Mao et al. 2019), the term the generator minimises:

        ratio = mean|fake_a - fake_b| / mean|z_a - z_b|
        loss  = 1 / (ratio + eps)

    where ``fake_a = G(z_a)`` and ``fake_b = G(z_b)`` for two latent batches, and each mean runs
    over all elements (as the authors' code computes it). Minimising it pushes G to map different
    latents to different samples. Add it to G's loss with a weight (the paper uses 1).
    ``fake_a``/``fake_b`` and ``z_a``/``z_b`` must match in shape, dtype and device."""
    eps = _checks.nonnegative(eps, "eps")
    for arg_a, a, arg_b, b in (("fake_a", fake_a, "fake_b", fake_b), ("z_a", z_a, "z_b", z_b)):
        _checks.check_floating(a, arg_a)
        _checks.check_floating(b, arg_b)
        _check_same_kind(a, b, arg_a, arg_b)
        if b.shape != a.shape:
            raise ValueError(f"{arg_b} has shape {list(b.shape)} but {arg_a} has shape {list(a.shape)}")
        _has_elements(a, arg_a)
    ratio = (fake_a - fake_b).abs().mean() / (z_a - z_b).abs().mean()
    return 1 / (ratio + eps)
