"""gan_kernels.monitor.StabilityMonitor on small deterministic runs: each failure sign flagged where the
literature says it occurs and nowhere else (Dirac-GAN with and without R1, a one-point generator, a
discriminator trained alone, a weight scaled up every step, a NaN, a healthy R1 mixture run), its
spectral norms against torch.linalg.matrix_norm, its scalars, writer, plot and bad input."""

import copy
import dataclasses
import io
import math
import os
import sys
import warnings

import numpy as np
import pytest
import torch

from helpers import DEVICES

import gan_kernels
from gan_kernels import losses
from gan_kernels.monitor import CONDITIONS, StabilityMonitor, StabilityWarning, Thresholds

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples"))
import mixture_of_gaussians as mog  # noqa: E402


@pytest.fixture
def one_thread():
    # The mixture example's networks are tiny: on a busy machine two threads only wait for each other.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def stability_warnings_are_errors():
    with warnings.catch_warnings():
        warnings.simplefilter("error", StabilityWarning)
        yield


def run_quietly(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StabilityWarning)
        return fn(*args, **kwargs)


def dirac_gan(gamma, steps=400, lr=0.1, every=10, observe_losses=True):
    """Mescheder et al.'s Dirac-GAN: data at 0, G a single point theta, D(x) = psi * x, the
    non-saturating loss, alternating SGD steps; R1 with weight gamma when gamma > 0. The monitor
    observes the logits, and the losses and penalty unless ``observe_losses`` is False."""
    d = torch.nn.Linear(1, 1, bias=False)
    g = torch.nn.Linear(1, 1, bias=False)  # G(1) = theta
    with torch.no_grad():
        d.weight.fill_(0.5)
        g.weight.fill_(1.0)
    opt_d = torch.optim.SGD(d.parameters(), lr=lr)
    opt_g = torch.optim.SGD(g.parameters(), lr=lr)
    monitor = StabilityMonitor(d, g, every=every)
    real, ones = torch.zeros(8, 1), torch.ones(8, 1)
    for _ in range(steps):
        x = real.clone().requires_grad_(gamma > 0)
        real_logits, fake_logits = d(x), d(g(ones).detach())
        d_loss = losses.discriminator_loss(real_logits, fake_logits, "non_saturating")
        penalty = gamma / 2 * gan_kernels.gradient_penalty(real_logits, x, center=0.0).mean() if gamma else None
        opt_d.zero_grad()
        (d_loss + penalty if gamma else d_loss).backward()
        monitor.observe_gradients("D", d)
        opt_d.step()
        g_loss = losses.generator_loss(d(g(ones)), kind="non_saturating")
        opt_g.zero_grad()
        g_loss.backward()
        monitor.observe_gradients("G", g)
        opt_g.step()
        if observe_losses:
            monitor.observe(
                real_logits=real_logits, fake_logits=fake_logits, d_loss=d_loss, g_loss=g_loss, penalty=penalty
            )
        else:
            monitor.observe(real_logits=real_logits, fake_logits=fake_logits)
    return monitor, g.weight.item(), d.weight.item()


def test_unregularised_dirac_gan_is_flagged_oscillation(one_thread):
    monitor, theta, psi = run_quietly(dirac_gan, 0.0)
    assert abs(theta) + abs(psi) > 0.05  # still cycling around the equilibrium
    assert "oscillation" in monitor.first_seen
    (issue,) = [w for w in monitor.warnings if w.name == "oscillation"]
    assert issue.evidence["crossings"] >= Thresholds().oscillation_crossings
    assert any("R1" in remedy for remedy in issue.remedies)


@pytest.mark.parametrize("observe_losses", [True, False])
def test_an_oscillation_stays_flagged_when_a_sample_batch_alone_is_checked(observe_losses, one_thread):
    # Reading warnings (or report()) after observe_samples runs a check with the diversity alone. The
    # oscillation's signal was picked from that check's record, which has no logit gap, so it turned
    # to the D loss: without one, the oscillation flagged a moment earlier was gone from warnings.
    monitor, _, _ = run_quietly(dirac_gan, 0.0, observe_losses=observe_losses)
    (before,) = [w for w in monitor.warnings if w.name == "oscillation"]
    assert before.evidence["signal"] == "logit_gap"
    monitor.observe_samples(torch.randn(16, 2), torch.randn(16, 2))
    (after,) = [w for w in run_quietly(lambda: monitor.warnings) if w.name == "oscillation"]
    assert len(monitor.history) == 41 and monitor.history[-1]["step"] == before.step
    assert after.evidence == before.evidence


def test_dirac_gan_with_r1_converges_and_raises_nothing(stability_warnings_are_errors, one_thread):
    monitor, theta, psi = dirac_gan(1.0)
    assert abs(theta) < 1e-3 and abs(psi) < 1e-3
    assert monitor.first_seen == {} and monitor.warnings == []


def test_a_generator_emitting_one_point_is_flagged_mode_collapse():
    torch.manual_seed(0)
    d = mog.make_discriminator(mog.CONFIGS["none"])
    point = torch.nn.Linear(mog.Z_DIM, 2)
    with torch.no_grad():
        point.weight.zero_()  # G(z) = bias for every z
    monitor = StabilityMonitor(d, point, every=10)
    centers, std = mog.DATASETS["ring8"]
    generator = torch.Generator().manual_seed(0)
    with pytest.warns(StabilityWarning, match="mode_collapse"):
        for step in range(30):
            real = mog.sample_mixture(centers, std, 64, generator)
            fake = point(torch.randn(64, mog.Z_DIM, generator=generator))
            monitor.observe(real_logits=d(real), fake_logits=d(fake))
            if step % 10 == 0:
                monitor.observe_samples(fake, real)
    assert [w.name for w in monitor.warnings] == ["mode_collapse"]
    assert monitor.report()["diversity"] == 0


@pytest.mark.parametrize("order", ["nan first", "nan last"])
def test_a_nan_diversity_is_not_evidence_of_collapse_wherever_it_sits(order):
    # Collapse was max(diversities) < threshold, and Python's max() over a NaN depends on the order:
    # max([nan, 0.0]) is nan (no collapse), max([0.0, nan]) is 0.0 (a collapse).
    monitor = StabilityMonitor(torch.nn.Linear(2, 1), every=50)
    generator = torch.Generator().manual_seed(0)
    real = torch.randn(64, 2, generator=generator)
    diverged = torch.randn(64, 2, generator=generator)
    diverged[3, 1] = math.nan
    point = torch.zeros(64, 2)  # diversity 0
    monitor.observe(d_loss=0.5)
    for fake in (diverged, point) if order == "nan first" else (point, diverged):
        monitor.observe_samples(fake, real)
    assert [w.name for w in run_quietly(lambda: monitor.warnings)] == ["non_finite"]
    # A NaN does not hide a collapse either, once patience numbers below the threshold follow it.
    monitor.observe(d_loss=0.5)
    for _ in range(Thresholds().patience):
        monitor.observe_samples(point, real)
    assert [w.name for w in run_quietly(lambda: monitor.warnings)] == ["mode_collapse"]


def test_samples_from_the_data_are_not_a_collapse(stability_warnings_are_errors):
    centers, std = mog.DATASETS["ring8"]
    generator = torch.Generator().manual_seed(1)
    monitor = StabilityMonitor(mog.make_discriminator(mog.CONFIGS["none"]), every=5)
    for _ in range(20):
        monitor.observe(d_loss=1.0)
        monitor.observe_samples(
            mog.sample_mixture(centers, std, 256, generator), mog.sample_mixture(centers, std, 256, generator)
        )
    assert 0.8 < monitor.report()["diversity"] < 1.25
    assert monitor.warnings == []


def test_scalar_samples_of_shape_n_get_a_diversity():
    # One number per sample (a 1-D toy GAN's data, shape [N]) passed the argument checks and then
    # raised "IndexError: Dimension out of range" from flatten(1).
    monitor = StabilityMonitor(torch.nn.Linear(1, 1), every=1)
    fake, real = torch.tensor([0.0, 1.0, 3.0]), torch.tensor([0.0, 2.0, 6.0])
    monitor.observe_samples(fake, real)
    # Mean pairwise distances: (1 + 3 + 2) / 3 over (2 + 6 + 4) / 3.
    assert monitor.report()["diversity"] == pytest.approx(0.5)


def test_thresholds_are_settable():
    # The same data-like samples are a collapse for a monitor told to expect 1.5x the data's spread.
    centers, std = mog.DATASETS["ring8"]
    generator = torch.Generator().manual_seed(2)
    strict = StabilityMonitor(torch.nn.Linear(2, 1), every=5, thresholds=Thresholds(collapse_diversity=1.5))
    with pytest.warns(StabilityWarning, match="mode_collapse"):
        for _ in range(10):
            strict.observe(d_loss=1.0)
            strict.observe_samples(
                mog.sample_mixture(centers, std, 256, generator), mog.sample_mixture(centers, std, 256, generator)
            )
    (issue,) = strict.warnings
    assert issue.name == "mode_collapse" and issue.evidence["threshold"] == 1.5


@pytest.mark.parametrize(
    "field, value, error, match",
    [
        # Accuracies are fractions; at 0, D "overpowers" G at every check.
        ("overpowering_accuracy", 1.5, ValueError, r"overpowering_accuracy must be in \(0, 1\], got 1.5"),
        ("overpowering_accuracy", 0, ValueError, r"overpowering_accuracy must be in \(0, 1\], got 0.0"),
        ("vanishing_accuracy", -0.1, ValueError, r"vanishing_accuracy must be in \[0, 1\], got -0.1"),
        ("vanishing_accuracy", math.nan, ValueError, r"vanishing_accuracy must be in \[0, 1\], got nan"),
        # At 0 no norm is below it; above 1 a steady norm is "vanishing".
        ("vanishing_gradient_ratio", 0.0, ValueError, r"vanishing_gradient_ratio must be in \(0, 1\], got 0.0"),
        ("vanishing_gradient_ratio", 2.0, ValueError, r"vanishing_gradient_ratio must be in \(0, 1\], got 2.0"),
        # Fewer than 4 check means hold no cycle of 2 or more cycles per window once their line is out.
        ("oscillation_windows", 0, ValueError, "oscillation_windows must be >= 4, got 0"),
        ("oscillation_windows", 3, ValueError, "oscillation_windows must be >= 4, got 3"),
        ("oscillation_windows", 16.0, TypeError, "oscillation_windows must be an int, got float 16.0"),
        ("oscillation_crossings", 0, ValueError, "oscillation_crossings must be >= 1, got 0"),
        ("oscillation_crossings", 16, ValueError, "oscillation_crossings must be <= 15 .*, got 16"),
        ("oscillation_contrast", 0.0, ValueError, "oscillation_contrast must be a finite number > 0, got 0.0"),
        ("oscillation_contrast", math.inf, ValueError, "oscillation_contrast must be a finite number > 0, got inf"),
        ("oscillation_decay", 1.5, ValueError, r"oscillation_decay must be in \[0, 1\], got 1.5"),
        # At 1 only a noiseless sinusoid at one of the frequencies fitted would be flagged.
        ("oscillation_periodicity", 1.0, ValueError, r"oscillation_periodicity must be in \[0, 1\), got 1.0"),
        ("oscillation_periodicity", -0.1, ValueError, r"oscillation_periodicity must be in \[0, 1\), got -0.1"),
        ("collapse_diversity", -0.2, ValueError, "collapse_diversity must be a finite number > 0, got -0.2"),
        ("collapse_diversity", "0.2", TypeError, "collapse_diversity must be a real number, got str '0.2'"),
        ("sigma_growth", 0.5, ValueError, r"sigma_growth must be in \[1, inf\), got 0.5"),
        ("sigma_growth", math.inf, ValueError, r"sigma_growth must be in \[1, inf\), got inf"),
        ("sigma_baseline_checks", 0, ValueError, "sigma_baseline_checks must be >= 1, got 0"),
        ("patience", -1, ValueError, "patience must be >= 1, got -1"),
        ("patience", 0, ValueError, "patience must be >= 1, got 0"),
        ("patience", True, TypeError, "patience must be an int, got bool True"),
    ],
)
def test_thresholds_outside_their_range_name_the_field_and_value(field, value, error, match):
    with pytest.raises(error, match=match):
        Thresholds(**{field: value})


@pytest.mark.parametrize(
    "field, value, error, match",
    [
        ("patience", 0, ValueError, "patience must be >= 1, got 0"),
        ("overpowering_accuracy", 1.5, ValueError, r"overpowering_accuracy must be in \(0, 1\], got 1.5"),
        ("collapse_diversity", "0.2", TypeError, "collapse_diversity must be a real number, got str '0.2'"),
        ("oscillation_crossings", 99, ValueError, "oscillation_crossings must be <= 15 .*, got 99"),
        # The cross-field rule also binds when the other field of the pair changes.
        ("oscillation_windows", 4, ValueError, "oscillation_crossings must be <= 3 .*, got 4"),
    ],
)
def test_thresholds_set_after_construction_are_checked_as_at_construction(field, value, error, match):
    # Only __post_init__ checked them: a later assignment was stored as given, and the monitor then never
    # (or always) flagged its condition.
    thresholds = Thresholds()
    with pytest.raises(error, match=match):
        setattr(thresholds, field, value)
    assert thresholds == Thresholds()  # the refused value is not stored


def test_thresholds_set_after_construction_are_stored_as_plain_numbers():
    thresholds = Thresholds()
    thresholds.patience = torch.tensor(3)
    thresholds.collapse_diversity = np.float32(0.5)
    thresholds.oscillation_crossings = 2
    thresholds.oscillation_windows = 4  # now crossings <= windows - 1 holds
    assert thresholds == dataclasses.replace(
        Thresholds(), patience=3, collapse_diversity=0.5, oscillation_crossings=2, oscillation_windows=4
    )
    assert type(thresholds.patience) is int and type(thresholds.collapse_diversity) is float
    with pytest.raises(ValueError, match="patience must be >= 1, got 0"):
        dataclasses.replace(thresholds, patience=0)


def test_a_misspelt_threshold_is_an_error_not_a_new_attribute():
    # Stored beside the real field, it would leave patience at 2 without a word.
    thresholds = Thresholds()
    with pytest.raises(AttributeError, match="Thresholds has no field 'patiense'; its fields are .*patience"):
        thresholds.patiense = 5
    assert thresholds == Thresholds() and not hasattr(thresholds, "patiense")


def test_a_monitor_takes_only_thresholds_later_too():
    monitor = StabilityMonitor(torch.nn.Linear(2, 1))
    with pytest.raises(TypeError, match="thresholds must be a gan_kernels.monitor.Thresholds, got dict"):
        monitor.thresholds = {"patience": 3}
    monitor.thresholds = Thresholds(patience=3)
    assert monitor.thresholds.patience == 3


def test_a_monitor_reads_its_thresholds_at_every_check():
    # The monitor keeps the Thresholds object it was given: a later change applies from the next check.
    thresholds = Thresholds()
    monitor = StabilityMonitor(torch.nn.Linear(2, 1), every=1, thresholds=thresholds)
    point, data = torch.zeros(16, 2), torch.randn(16, 2, generator=torch.Generator().manual_seed(0))

    def names():
        monitor.observe_samples(point, data)  # diversity 0: a collapse
        run_quietly(monitor.observe, d_loss=0.5)
        return [w.name for w in monitor.warnings]

    assert names() == [] and names() == ["mode_collapse"]  # patience 2
    thresholds.patience = 4
    assert names() == [] and names() == ["mode_collapse"]


def test_thresholds_take_numbers_in_every_form_and_store_plain_ones():
    thresholds = Thresholds(
        overpowering_accuracy=np.float32(0.5),
        vanishing_gradient_ratio=torch.tensor(0.25),
        oscillation_windows=np.int64(4),
        oscillation_crossings=torch.tensor(3),
        oscillation_contrast=20,
        oscillation_decay=0,
        sigma_growth=1,
        patience=np.int32(1),
    )
    assert thresholds == Thresholds(
        overpowering_accuracy=0.5,
        vanishing_gradient_ratio=0.25,
        oscillation_windows=4,
        oscillation_crossings=3,
        oscillation_contrast=20.0,
        oscillation_decay=0.0,
        sigma_growth=1.0,
        patience=1,
    )
    fields = dataclasses.asdict(thresholds)
    assert all(type(value) is type(Thresholds.__dataclass_fields__[name].default) for name, value in fields.items())


def test_a_discriminator_trained_alone_is_flagged_overpowering(one_thread):
    # G is never stepped; its gradient under the saturating minimax loss is what it would get.
    torch.manual_seed(0)
    config = mog.CONFIGS["none"]
    d = mog.make_discriminator(config)
    g = mog.mlp([mog.Z_DIM, 16, 2], torch.nn.ReLU)
    opt_d = torch.optim.Adam(d.parameters(), lr=config.lr_d, betas=config.betas)
    monitor = StabilityMonitor(d, g, every=25)
    centers, std = mog.DATASETS["ring8"]
    generator = torch.Generator().manual_seed(0)
    for _ in range(300):
        real = mog.sample_mixture(centers, std, 64, generator) / 2
        fake = g(torch.randn(64, mog.Z_DIM, generator=generator))
        d_loss, observed = mog.discriminator_loss(config, d, real, fake.detach(), generator)
        opt_d.zero_grad()
        d_loss.backward()
        opt_d.step()
        g.zero_grad()
        losses.generator_loss(d(fake), kind="minimax").backward()
        monitor.observe_gradients("G", g)
        run_quietly(monitor.observe, d_loss=d_loss, **observed)
    assert "discriminator_overpowering" in [w.name for w in monitor.warnings]  # still, at the end
    assert set(monitor.first_seen) == {"discriminator_overpowering", "vanishing_generator_gradient"}
    assert monitor.first_seen["discriminator_overpowering"] < monitor.first_seen["vanishing_generator_gradient"]
    assert monitor.report()["d_accuracy"] >= Thresholds().overpowering_accuracy


def observe_while_scaling_up(monitor, layer, steps=60):
    """Steps in which the layer's weight grows by 15% each, and the monitor observes them."""
    for _ in range(steps):
        with torch.no_grad():
            layer.weight.mul_(1.15)
        run_quietly(monitor.observe, d_loss=torch.tensor(0.5))


def test_a_weight_scaled_up_every_step_is_flagged_exploding_sigma():
    torch.manual_seed(0)
    d = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    monitor = StabilityMonitor(d, every=5)
    observe_while_scaling_up(monitor, d[2])
    (issue,) = monitor.warnings
    assert issue.name == "exploding_sigma" and issue.evidence["layer"] == "sigma/D/2.weight"
    assert issue.evidence["sigma"] > Thresholds().sigma_growth * issue.evidence["first"]
    # The layer that was left alone is not flagged.
    assert all(w.evidence["layer"] != "sigma/D/0.weight" for w in monitor.warnings)


def test_a_nan_weight_does_not_end_the_tracking_of_its_sigma():
    # The power iteration's persistent u, v turn NaN with the weight; they stayed NaN, and so did every
    # later sigma of the layer, also once the weight was finite again (a run restored from a checkpoint).
    torch.manual_seed(0)
    d = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    monitor = StabilityMonitor(d, every=1)
    good, _ = spiked(d[0].weight.shape, 0, seed=0)  # sigma 3, the next 1: the iteration converges fast
    with torch.no_grad():
        d[0].weight.fill_(math.nan)
    run_quietly(monitor.observe, d_loss=0.5)
    assert "non_finite" in [w.name for w in monitor.warnings]
    with torch.no_grad():
        d[0].weight.copy_(good)
    monitor.observe(d_loss=0.5)
    expected = float(torch.linalg.matrix_norm(good.double(), 2))
    assert monitor.report()["sigma/D/0.weight"] == pytest.approx(expected, rel=1e-5)
    assert monitor.warnings == []


def test_a_spectrally_normalised_weight_of_zeros_is_non_finite_not_a_crash():
    # Its normalising sigma is 0: the layer's forward computes 0 / 0 (NaN), and the check divided the
    # raw sigma by it as Python floats, which raised ZeroDivisionError out of observe().
    d = torch.nn.Sequential(gan_kernels.nn.spectral_norm(torch.nn.Linear(4, 8)), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    with torch.no_grad():
        d[0].parametrizations.weight.original.zero_()
    monitor = StabilityMonitor(d, every=1)
    run_quietly(monitor.observe, d_loss=0.5)
    assert "non_finite" in [w.name for w in monitor.warnings]
    assert math.isnan(monitor.report()["sigma_normalized/D/0.weight"])


def test_a_non_finite_sigma_in_the_baseline_checks_is_left_out_of_the_baseline():
    # A NaN among the first sigma_baseline_checks sigmas made the baseline NaN, and exploding_sigma could
    # never fire for the rest of the run. The NaN itself is non_finite.
    torch.manual_seed(0)
    d = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    monitor = StabilityMonitor(d, every=5)
    good = d[2].weight.detach().clone()
    with torch.no_grad():
        d[2].weight.fill_(math.nan)
    for _ in range(5):
        run_quietly(monitor.observe, d_loss=torch.tensor(0.5))
    (issue,) = monitor.warnings
    assert issue.name == "non_finite" and "sigma/D/2.weight" in issue.evidence["signals"]
    with torch.no_grad():
        d[2].weight.copy_(good)
    observe_while_scaling_up(monitor, d[2])
    (issue,) = monitor.warnings
    assert issue.name == "exploding_sigma" and issue.evidence["layer"] == "sigma/D/2.weight"
    # The baseline: the largest of the first three finite sigmas (checks 2 to 4), the NaN left out.
    first = [r["sigma/D/2.weight"] for r in monitor.history[1:4]]
    assert issue.evidence["first"] == max(first) and math.isfinite(issue.evidence["first"])


def test_a_layer_that_starts_at_zero_gets_its_baseline_from_its_first_positive_sigmas():
    # A zero weight gave sigma 0 and left u, v at 0, so the sigma stayed 0 after the weight grew; and a
    # baseline of zeros made any growth at all exploding_sigma.
    torch.manual_seed(0)
    d = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    monitor = StabilityMonitor(d, every=5)
    with torch.no_grad():
        d[2].weight.zero_()
    for _ in range(15):  # the first sigma_baseline_checks checks, all at sigma 0
        monitor.observe(d_loss=0.5)
    assert [r["sigma/D/2.weight"] for r in monitor.history] == [0.0, 0.0, 0.0]
    with torch.no_grad():
        d[2].weight.normal_(0, 0.01)
    for _ in range(40):  # a weight that grows a little at every step: 1.5x over the 8 checks
        with torch.no_grad():
            d[2].weight.mul_(1.01)
        run_quietly(monitor.observe, d_loss=0.5)
    assert monitor.first_seen == {} and len(monitor.history) == 11
    expected = float(torch.linalg.matrix_norm(d[2].weight.detach().double(), 2))
    assert monitor.report()["sigma/D/2.weight"] == pytest.approx(expected, rel=1e-5)
    observe_while_scaling_up(monitor, d[2])
    (issue,) = monitor.warnings
    assert issue.name == "exploding_sigma" and issue.evidence["layer"] == "sigma/D/2.weight"
    # The baseline: the largest of the first three positive sigmas (checks 4 to 6), the zeros left out.
    assert issue.evidence["first"] == max(r["sigma/D/2.weight"] for r in monitor.history[3:6]) > 0


def test_a_nan_in_any_sample_batch_of_a_check_is_flagged_non_finite():
    # Only the latest observe_samples call of a check was looked at: an earlier NaN batch went unseen.
    monitor = StabilityMonitor(torch.nn.Linear(2, 1), every=50)
    generator = torch.Generator().manual_seed(0)
    real = torch.randn(64, 2, generator=generator)
    diverged = torch.randn(64, 2, generator=generator)
    diverged[3, 1] = math.nan
    monitor.observe(d_loss=0.5)
    monitor.observe_samples(diverged, real)
    monitor.observe(d_loss=0.5)
    monitor.observe_samples(torch.randn(64, 2, generator=generator), real)
    with pytest.warns(StabilityWarning, match="non_finite"):
        issues = monitor.warnings
    assert [w.name for w in issues] == ["non_finite"] and issues[0].evidence["signals"] == "diversity"
    assert math.isfinite(monitor.report()["diversity"])  # the latest measurement, as reported


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("where", ["d_loss", "real_logits"])
def test_a_nan_is_flagged_non_finite_at_once(where, device):
    monitor = StabilityMonitor(torch.nn.Linear(3, 1).to(device), every=50)
    monitor.observe(
        d_loss=torch.tensor(0.7, device=device),
        real_logits=torch.randn(4, device=device),
        fake_logits=torch.randn(4, device=device),
    )
    values = {"d_loss": torch.tensor(0.7), "real_logits": torch.randn(4), "fake_logits": torch.randn(4)}
    values[where] = torch.tensor(math.nan) if where == "d_loss" else torch.tensor([0.1, math.nan, 0, 1])
    monitor.observe(**{name: value.to(device) for name, value in values.items()})
    with pytest.warns(StabilityWarning, match="non_finite"):
        issues = monitor.warnings  # read after 2 of the 50 steps
    assert [w.name for w in issues] == ["non_finite"] and issues[0].step == 2


def test_a_healthy_r1_mixture_run_raises_nothing(stability_warnings_are_errors, one_thread):
    samples, _, monitor = mog.train(mog.CONFIGS["r1"], "ring8", 600, 0, monitor_every=25)
    assert monitor.first_seen == {} and monitor.warnings == []
    assert len(monitor.history) == 600 // 25
    report = monitor.report()
    for key in (
        "real_logit_mean",
        "fake_logit_mean",
        "logit_gap",
        "d_accuracy",
        "d_loss",
        "g_loss",
        "penalty",
        "grad_norm/D",
        "grad_norm/G",
        "diversity",
        "sigma/D/0.weight",
        "sigma/G/0.weight",
    ):
        assert math.isfinite(report[key]), key


def spiked(shape, dim, seed, top=3.0):
    """A weight whose matrix (dim first, the rest flattened) has singular values top, 1, ..., 0.1."""
    generator = torch.Generator().manual_seed(seed)
    permuted = [shape[dim]] + [s for d, s in enumerate(shape) if d != dim]
    matrix = torch.randn(permuted[0], math.prod(permuted[1:]), generator=generator, dtype=torch.float64)
    u, _, vh = torch.linalg.svd(matrix, full_matrices=False)
    singular = torch.linspace(1.0, 0.1, u.shape[1], dtype=torch.float64)
    singular[0] = top
    matrix = u @ torch.diag(singular) @ vh
    return matrix.reshape(permuted).movedim(0, dim).float(), 1.0 / top


def test_the_checks_records_share_their_sigma_keys():
    # Each check made its sigma keys afresh, one string per layer per check: more of a long run's
    # history (and of every checkpoint's state) than the sigmas themselves.
    d = torch.nn.Sequential(gan_kernels.nn.spectral_norm(torch.nn.Linear(4, 4)), torch.nn.Linear(4, 4))
    monitor = StabilityMonitor(d, every=1)
    for _ in range(3):
        monitor.observe(d_loss=0.5)
    first, *later = [[k for k in record if k.startswith("sigma")] for record in monitor.history]
    assert len(first) == 3  # two raw sigmas and one normalised
    assert all(a is b for keys in later for a, b in zip(first, keys, strict=True))


def test_empty_weights_are_not_tracked():
    # Linear(5, 0) has no rows: building the monitor divided by zero (and a spectral-normalised one
    # would divide its sigma by a normalising sigma of 0). They have no spectral norm to watch.
    d = torch.nn.Sequential(
        torch.nn.Linear(3, 5),
        torch.nn.Linear(5, 0),
        gan_kernels.nn.spectral_norm(torch.nn.Linear(5, 0)),
        torch.nn.Linear(0, 2),
    )
    monitor = StabilityMonitor(d, every=1)
    monitor.observe(d_loss=1.0)
    assert [key for key in monitor.report() if key.startswith("sigma/")] == ["sigma/D/0.weight"]


def test_weights_made_by_a_parametrization_other_than_spectral_norm_are_tracked():
    # torch.nn.utils.parametrizations.weight_norm (HiFi-GAN's and MelGAN's G and D) keeps g and v in
    # parametrizations.weight.original0/1, parameters of the ParametrizationList, which the monitor
    # skips: such a layer's weight was not tracked at all, and exploding_sigma could never fire there.
    torch.manual_seed(0)
    d = torch.nn.Sequential(
        torch.nn.utils.parametrizations.weight_norm(torch.nn.Conv1d(2, 6, 3)),
        torch.nn.utils.parametrizations.weight_norm(torch.nn.ConvTranspose1d(6, 4, 3)),
        torch.nn.Linear(4, 1),
    )
    monitor = StabilityMonitor(d, every=1, sigma_iterations=50)  # converged, whatever the sigma gap
    monitor.observe(d_loss=1.0)
    with torch.no_grad():
        d[0].parametrizations.weight.original0.mul_(3.0)  # g: the weight's norm per output channel
    for _ in range(5):
        monitor.observe(d_loss=1.0)
    report = monitor.report()
    assert sorted(key for key in report if key.startswith("sigma")) == [
        "sigma/D/0.weight",
        "sigma/D/1.weight",
        "sigma/D/2.weight",
    ]
    for name, dim in (("0.weight", 0), ("1.weight", 1)):
        weight = d.get_submodule(name.split(".")[0]).weight.detach()
        expected = torch.linalg.matrix_norm(weight.movedim(dim, 0).flatten(1).double(), 2)
        assert report[f"sigma/D/{name}"] == pytest.approx(float(expected), rel=1e-5), name


def test_sigmas_equal_the_matrix_norm_after_warm_up():
    torch.manual_seed(0)
    d = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3),
        torch.nn.ConvTranspose2d(8, 4, 2),
        torch.nn.Flatten(),
        torch.nn.Linear(36, 6),
        gan_kernels.nn.spectral_norm(torch.nn.Linear(6, 5)),
        torch.nn.utils.parametrizations.spectral_norm(torch.nn.Linear(5, 1)),
    )
    targets = {
        "0.weight": (d[0].weight, 0),
        "1.weight": (d[1].weight, 1),
        "3.weight": (d[3].weight, 0),
        "4.weight": (d[4].parametrizations.weight.original, 0),
        "5.weight": (d[5].parametrizations.weight.original, 0),
    }
    ratios = {}
    with torch.no_grad():
        for seed, (name, (weight, dim)) in enumerate(targets.items()):
            value, ratios[name] = spiked(weight.shape, dim, seed)
            weight.copy_(value)
    for _ in range(20):  # the spectral norms' own power iterations converge on the new weights
        d(torch.randn(2, 3, 4, 4))
    monitor = StabilityMonitor(d, every=1, sigma_iterations=1)
    monitor.observe(d_loss=0.0)
    report = monitor.report()
    iterations = 15 + 1  # warm-up, then one per check
    for name, (weight, dim) in targets.items():
        expected = torch.linalg.matrix_norm(weight.detach().movedim(dim, 0).flatten(1).double(), 2)
        # Power iteration's error in sigma shrinks as (sigma_2 / sigma_1)^(2 iterations); float32 rounding.
        tolerance = 4 * ratios[name] ** (2 * iterations) + 1e-6
        assert report[f"sigma/D/{name}"] == pytest.approx(float(expected), rel=tolerance), name
    # Spectrally normalised layers also get W / sigma's norm, with the sigma their forward used.
    used = {"4.weight": float(d[4].parametrizations.weight[0].sigma)}
    sn = d[5].parametrizations.weight[0]
    original = d[5].parametrizations.weight.original.detach()
    used["5.weight"] = float(torch.vdot(sn._u, original.flatten(1) @ sn._v))
    for name, sigma in used.items():
        expected = float(torch.linalg.matrix_norm(targets[name][0].detach().double(), 2)) / sigma
        assert report[f"sigma_normalized/D/{name}"] == pytest.approx(expected, rel=1e-5)
        assert report[f"sigma_normalized/D/{name}"] == pytest.approx(1.0, rel=1e-3)
    assert "sigma_normalized/D/3.weight" not in report


def test_networks_converted_to_another_dtype_after_the_monitor_was_built_keep_their_sigmas():
    # monitor = StabilityMonitor(D); D.double() (or .half(), .to(device)): module.to() converts the
    # parameters in place, the monitor's u, v stayed as they were, and the first check raised
    # "us[0] has dtype torch.float32 but weights[0] has dtype torch.float64".
    torch.manual_seed(0)
    d = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Linear(5, 2))
    monitor = StabilityMonitor(d, every=1)
    monitor.observe(d_loss=1.0)
    d.double()
    for _ in range(10):
        monitor.observe(d_loss=1.0)
    report = monitor.report()
    for name in ("0.weight", "1.weight"):
        expected = torch.linalg.matrix_norm(d.get_submodule(name.split(".")[0]).weight.detach(), 2)
        assert report[f"sigma/D/{name}"] == pytest.approx(float(expected), rel=1e-6), name


@pytest.mark.parametrize("device", DEVICES)
def test_report_holds_the_means_of_the_observed_values(device):
    monitor = StabilityMonitor(torch.nn.Linear(2, 1).to(device), every=10)
    real = [torch.tensor([1.0, 2.0, -1.0]), torch.tensor([0.5, 0.5, 3.0])]
    fake = [torch.tensor([-1.0, 0.5, -2.0, -3.0]), torch.tensor([-0.5, -0.5, 1.0, 2.0])]
    for r, f, loss in zip(real, fake, (0.25, 0.75)):
        monitor.observe(
            real_logits=r.to(device),
            fake_logits=f.to(device),
            d_loss=loss,
            penalty=torch.tensor(2 * loss, device=device),
        )
    report = monitor.report()
    assert report["step"] == 2
    assert report["real_logit_mean"] == pytest.approx(float(real[0].mean() + real[1].mean()) / 2)
    assert report["fake_logit_mean"] == pytest.approx(float(fake[0].mean() + fake[1].mean()) / 2)
    assert report["logit_gap"] == pytest.approx(report["real_logit_mean"] - report["fake_logit_mean"])
    # Correct by sign: 2 of 3 real and 3 of 4 fake in the first step, 3 of 3 and 2 of 4 in the second.
    assert report["d_accuracy"] == pytest.approx((5 / 7 + 5 / 7) / 2)
    assert report["d_loss"] == pytest.approx(0.5) and report["penalty"] == pytest.approx(1.0)
    assert "g_loss" not in report and "grad_norm/G" not in report


def test_gradient_norms_are_the_total_norm_of_the_grads():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    net(torch.randn(5, 3)).sum().backward()
    monitor = StabilityMonitor(net)
    monitor.observe_gradients("D", net)
    monitor.observe(d_loss=0.0)
    expected = torch.cat([p.grad.flatten() for p in net.parameters()]).norm()
    assert monitor.report()["grad_norm/D"] == pytest.approx(float(expected), rel=1e-6)


def test_the_host_reads_the_statistics_only_every_every_steps(monkeypatch):
    monitor = StabilityMonitor(torch.nn.Linear(2, 1), every=50)
    checks = []
    original = monitor._check
    monkeypatch.setattr(monitor, "_check", lambda: (checks.append(monitor.step), original()))
    for _ in range(120):
        monitor.observe(real_logits=torch.randn(4), fake_logits=torch.randn(4), d_loss=torch.tensor(0.3))
    assert checks == [50, 100]


class RecordingWriter:
    def __init__(self):
        self.scalars = []

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, value, step))


def test_writer_gets_every_scalar_of_every_check():
    writer = RecordingWriter()
    monitor = StabilityMonitor(torch.nn.Linear(2, 1), every=3, writer=writer)
    for _ in range(6):
        monitor.observe(real_logits=torch.randn(4), fake_logits=torch.randn(4), d_loss=0.5)
    report = monitor.report()
    written = {(tag, step): value for tag, value, step in writer.scalars}
    assert {step for _, step in written} == {3, 6}
    for key, value in report.items():
        if key != "step":
            assert written[f"stability/{key}", 6] == value


def test_a_tensorboard_summary_writer_works(tmp_path):
    pytest.importorskip("tensorboard")
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(tmp_path) as writer:
        monitor = StabilityMonitor(torch.nn.Linear(2, 1), every=2, writer=writer)
        for _ in range(4):
            monitor.observe(real_logits=torch.randn(4), fake_logits=torch.randn(4), d_loss=0.5)
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(tmp_path))


def test_plot_draws_a_dashboard(tmp_path, one_thread):
    pytest.importorskip("matplotlib")
    monitor, _, _ = run_quietly(dirac_gan, 0.0, steps=200)
    path = monitor.plot(tmp_path / "dashboard.png")
    assert os.path.getsize(path) > 10_000


def test_plot_leaves_the_users_matplotlib_backend_alone(tmp_path):
    # plot() called matplotlib.use("Agg"): in a notebook (or with any other backend) the user's later
    # figures went to Agg, silently, and plt.show() showed nothing.
    matplotlib = pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    before = matplotlib.get_backend()
    plt.switch_backend("svg")
    try:
        monitor = StabilityMonitor(torch.nn.Linear(2, 1), every=1)
        monitor.observe(d_loss=1.0)
        figures = plt.get_fignums()
        monitor.plot(tmp_path / "dashboard.png")
        assert matplotlib.get_backend() == "svg"
        assert plt.get_fignums() == figures
        assert os.path.getsize(tmp_path / "dashboard.png") > 10_000
    finally:
        plt.switch_backend(before)


def test_every_condition_has_remedies():
    from gan_kernels.monitor import REMEDIES

    assert set(CONDITIONS) == {
        "non_finite",
        "discriminator_overpowering",
        "vanishing_generator_gradient",
        "oscillation",
        "mode_collapse",
        "exploding_sigma",
    }
    assert all(len(REMEDIES[name]) >= 2 for name in CONDITIONS)
    assert gan_kernels.StabilityWarning is StabilityWarning and issubclass(StabilityWarning, UserWarning)


def test_bad_arguments_name_the_argument_and_value():
    d = torch.nn.Linear(2, 1)
    with pytest.raises(ValueError, match="every must be >= 1, got 0"):
        StabilityMonitor(d, every=0)
    with pytest.raises(ValueError, match="samples must be >= 2, got 1"):
        StabilityMonitor(d, samples=1)
    with pytest.raises(TypeError, match="sigma_iterations must be an int, got float"):
        StabilityMonitor(d, sigma_iterations=2.5)
    with pytest.raises(TypeError, match="every must be an int, got bool"):
        StabilityMonitor(d, every=True)
    with pytest.raises(ValueError, match="max_history must be >= 1, got 0"):
        StabilityMonitor(d, max_history=0)
    with pytest.raises(TypeError, match="max_history must be an int, got float"):
        StabilityMonitor(d, max_history=1e4)
    with pytest.raises(TypeError, match="D must be a torch.nn.Module, got str"):
        StabilityMonitor("D")
    with pytest.raises(TypeError, match="writer must have an add_scalar"):
        StabilityMonitor(d, writer=object())
    with pytest.raises(TypeError, match="thresholds must be"):
        StabilityMonitor(d, thresholds={"patience": 3})
    monitor = StabilityMonitor(d)
    with pytest.raises(ValueError, match="observe\\(\\) needs at least one"):
        monitor.observe()
    with pytest.raises(ValueError, match="network must be 'D' or 'G', got 'X'"):
        monitor.observe_gradients("X", d)
    with pytest.raises(ValueError, match="has no gradients"):
        monitor.observe_gradients("D", d)
    with pytest.raises(ValueError, match=r"d_loss must be a scalar.*\[3\]"):
        monitor.observe(d_loss=torch.ones(3))
    with pytest.raises(TypeError, match="g_loss must be a real number"):
        monitor.observe(g_loss="0.5")
    with pytest.raises(ValueError, match="fake has shape"):
        monitor.observe_samples(torch.randn(4, 2), torch.randn(4, 3))


def test_numbers_numpy_scalars_and_tensors_are_accepted():
    np = pytest.importorskip("numpy")
    monitor = StabilityMonitor(torch.nn.Linear(2, 1))
    monitor.observe(d_loss=0.5, g_loss=np.float32(1.5), penalty=torch.tensor([2.5], dtype=torch.float64))
    report = monitor.report()
    assert (report["d_loss"], report["g_loss"], report["penalty"]) == (0.5, 1.5, 2.5)


@pytest.mark.parametrize("value", [np.int64(3), np.int32(3), torch.tensor(3)], ids=lambda v: type(v).__name__)
def test_count_arguments_take_numpy_ints_and_0d_tensors(value):
    # As every other count argument of the package: they were refused with "every must be an integer".
    monitor = StabilityMonitor(torch.nn.Linear(2, 1), every=value, sigma_iterations=value, samples=value)
    assert (monitor.every, monitor.sigma_iterations, monitor.samples) == (3, 3, 3)
    assert all(type(v) is int for v in (monitor.every, monitor.sigma_iterations, monitor.samples))
    for _ in range(3):
        monitor.observe(d_loss=0.5)
    assert len(monitor.history) == 1


def test_fp16_gradient_norms_do_not_overflow_into_a_false_non_finite(stability_warnings_are_errors):
    # Every element is a finite float16, but the weight's norm (about 1.2e5) is beyond float16's 65504.
    generator = torch.Generator().manual_seed(0)
    net = torch.nn.Linear(200, 200).half()
    for p in net.parameters():
        p.grad = (1000 * torch.randn(p.shape, generator=generator)).half()
    monitor = StabilityMonitor(torch.nn.Linear(2, 1))
    monitor.observe_gradients("G", net)
    monitor.observe(d_loss=0.0)
    expected = torch.cat([p.grad.double().flatten() for p in net.parameters()]).norm()
    # Accumulated in float32 (40,200 squares), against a float64 reference.
    assert monitor.report()["grad_norm/G"] == pytest.approx(float(expected), rel=1e-5)
    assert monitor.warnings == []


def test_one_infinite_generator_gradient_norm_does_not_flag_vanishing_gradients_forever():
    # A step whose gradients overflow (GradScaler skips it) is non_finite at its check; it must not
    # become "the largest norm so far", which would make every later, unchanged norm "vanishing".
    d, g = torch.nn.Linear(2, 1), torch.nn.Linear(4, 4)
    monitor = StabilityMonitor(d, every=1)
    found = []
    for value in [1.0, 1.0, 1.0, math.inf] + [1.0] * 6:
        for p in g.parameters():
            p.grad = torch.full_like(p, value)
        monitor.observe_gradients("G", g)
        # D classifies everything correctly, as vanishing_generator_gradient requires.
        run_quietly(monitor.observe, real_logits=torch.full((8,), 5.0), fake_logits=torch.full((8,), -5.0))
        found.append({issue.name for issue in monitor.warnings})
    assert "non_finite" in found[3]
    assert not any("vanishing_generator_gradient" in names for names in found)
    # A real collapse of the norm after the Inf is still flagged.
    for _ in range(3):
        for p in g.parameters():
            p.grad = torch.full_like(p, 1e-4)
        monitor.observe_gradients("G", g)
        run_quietly(monitor.observe, real_logits=torch.full((8,), 5.0), fake_logits=torch.full((8,), -5.0))
    assert "vanishing_generator_gradient" in {issue.name for issue in monitor.warnings}


@pytest.mark.parametrize("every, logits_every", [(1, 1), (50, 50), (50, 25)])
def test_noise_around_a_fixed_point_is_not_oscillation_however_sparsely_the_logits_come(
    every, logits_every, stability_warnings_are_errors
):
    # The logit gap is noise around a fixed point. The noise of a check mean was taken as the
    # within-check variance / the check's steps: 0 with one observation per check (every=1, or logits
    # observed once per check), an "infinite contrast", and 25x too small with 2 observations in 50
    # steps; both flagged oscillation.
    generator = torch.Generator().manual_seed(1)
    monitor = StabilityMonitor(torch.nn.Linear(2, 1), every=every)
    for step in range(every * 40):
        if step % logits_every == 0:
            real = 1 + torch.randn(16, generator=generator)
            fake = -1 + torch.randn(16, generator=generator)
            monitor.observe(real_logits=real, fake_logits=fake, d_loss=0.5)
        else:
            monitor.observe(d_loss=0.5)
    assert len(monitor.history) == 40
    assert monitor.warnings == []


def gap_run(levels, every, seed):
    """A monitor that observed the logit gap ``levels[step]`` (one per step) plus noise: 16 real and 16
    fake logits with standard deviation 1 each step."""
    generator = torch.Generator().manual_seed(seed)
    monitor = StabilityMonitor(torch.nn.Linear(2, 1), every=every)
    for level in levels.tolist():
        real = level + torch.randn(16, generator=generator)
        monitor.observe(real_logits=real, fake_logits=torch.randn(16, generator=generator))
    return monitor


def wander(kind, checks, every, seed):
    """A logit gap that wanders, per step: a random walk, a random walk with a trend, or a
    mean-reverting wander (the gap returns, but at no period) with a correlation time of 4 checks."""
    generator = torch.Generator().manual_seed(1000 + seed)
    steps = torch.randn(checks * every, generator=generator, dtype=torch.float64)
    if kind == "random walk":
        return (0.3 * steps).cumsum(0)
    if kind == "random walk and trend":
        return (0.3 * steps + 0.05).cumsum(0)
    keep = math.exp(-1 / (4 * every))
    levels = torch.empty_like(steps)
    level = 0.0
    for step, shock in enumerate((steps * math.sqrt(1 - keep * keep)).tolist()):
        level = keep * level + shock
        levels[step] = level
    return levels


@pytest.mark.parametrize("kind", ["random walk", "random walk and trend", "mean-reverting wander"])
def test_a_wandering_logit_gap_is_not_oscillation(kind):
    # A healthy run's logit gap drifts. Its check means crossed their mean often enough and varied far
    # more than step noise would make them, so a cycle was read into 16 of these 20 random walks, 9 of
    # the walks with a trend and 17 of the mean-reverting wanders (where the DDP recipe stops on
    # warnings, each of those runs stopped). One sinusoid of 2 or more cycles per window explains up to
    # about 84% of a wander's variation about its line in 99 windows out of 100, and 90% is asked for:
    # a few runs in a hundred can still find a window that looks like a cycle.
    flagged = [
        seed
        for seed in range(20)
        if "oscillation" in run_quietly(gap_run, wander(kind, 40, 10, seed), 10, seed).first_seen
    ]
    assert len(flagged) <= 1, flagged


def cycle(period, checks, every, seed, amplitude=2.0, onset=0, damping=math.inf, jitter=0.0):
    """A logit gap that cycles with ``period`` checks from check ``onset`` on (random phase; its
    amplitude decays by e every ``damping`` checks; ``jitter``: the phase diffuses by that fraction of
    a period's angle per check, a quasi-periodic cycle)."""
    generator = torch.Generator().manual_seed(2000 + seed)
    time = torch.arange(checks * every, dtype=torch.float64) / every - onset  # in checks
    speed = 2 * math.pi / period / every + jitter * 2 * math.pi / period / math.sqrt(every) * torch.randn(
        checks * every, generator=generator, dtype=torch.float64
    )
    phase = speed.cumsum(0) + 2 * math.pi * torch.rand((), generator=generator, dtype=torch.float64)
    envelope = amplitude * torch.exp(-time.clamp(min=0) / damping)
    return torch.where(time >= 0, envelope * torch.sin(phase), 0.0)


@pytest.mark.parametrize("jitter", [0.0, 0.2])
@pytest.mark.parametrize("period", [4, 6, 8])
def test_cycles_of_4_to_8_checks_are_flagged_oscillation_with_their_period(period, jitter):
    for seed in range(4):
        monitor = run_quietly(gap_run, cycle(period, 40, 10, seed, onset=8, jitter=jitter), 10, seed)
        assert "oscillation" in monitor.first_seen, seed
        if not jitter:
            (issue,) = [w for w in monitor.warnings if w.name == "oscillation"]
            assert issue.evidence["period"] == pytest.approx(period, rel=0.05)
            assert issue.evidence["periodicity"] >= Thresholds().oscillation_periodicity


@pytest.mark.parametrize("period, damping", [(5, 6), (8, 6)])
def test_a_cycle_that_dies_away_after_a_kick_is_not_oscillation(period, damping):
    # Quiet, then a kick that rings down (by e every `damping` checks): the window that held the quiet
    # checks and the kick had a later half larger than its earlier one, which passed for a cycle that
    # does not settle. No sinusoid of one amplitude fits quiet and a ringing together.
    for seed in range(10):
        monitor = run_quietly(gap_run, cycle(period, 40, 10, seed, onset=8, damping=damping), 10, seed)
        assert "oscillation" not in monitor.first_seen, seed


def resumable_gan():
    """A D with a spectrally normalised layer and a G with a weight-normalised one, as a restarted
    process builds them (the same initial weights every time)."""
    torch.manual_seed(0)
    d = torch.nn.Sequential(
        gan_kernels.nn.spectral_norm(torch.nn.Linear(2, 16)),
        torch.nn.ReLU(),
        torch.nn.Linear(16, 16),
        torch.nn.ReLU(),
        torch.nn.Linear(16, 1),
    )
    with torch.no_grad():
        # Its top two singular values 2% apart: the power iteration converges slowly, so u, v matter.
        d[2].weight.copy_(spiked(d[2].weight.shape, 0, seed=0, top=1.02)[0])
    g = torch.nn.Sequential(
        torch.nn.utils.parametrizations.weight_norm(torch.nn.Linear(3, 8)), torch.nn.Tanh(), torch.nn.Linear(8, 2)
    )
    return d, g


RESUMABLE = dict(every=5, samples=8, thresholds=Thresholds(sigma_baseline_checks=1))


def run_resumable(monitor, d, g, steps):
    """Steps that depend on the step number only, so that a resumed run replays them exactly: D's middle
    layer grows 15% a step from the start and G's last from step 15 (exploding_sigma for D before step 28,
    for G after it), G's samples collapse to one point from step 33 (mode_collapse after step 28).
    Returns each check's warnings and the StabilityWarnings raised."""
    checks = []
    with warnings.catch_warnings(record=True) as raised:
        warnings.simplefilter("always", StabilityWarning)
        for step in steps:
            data = torch.Generator().manual_seed(step)
            with torch.no_grad():
                d[2].weight.mul_(1.15)
                if step >= 15:
                    g[2].weight.mul_(1.15)
            real = torch.randn(16, 2, generator=data) / 10  # about as spread as G's first samples
            fake = g(torch.randn(16, 3, generator=data))
            real_logits, fake_logits = d(real), d(fake)  # training mode: spectral norm's u, v move on
            d_loss = losses.discriminator_loss(real_logits, fake_logits, "non_saturating")
            g_loss = losses.generator_loss(fake_logits, kind="non_saturating")
            d.zero_grad()
            g.zero_grad()
            (d_loss + g_loss).backward()
            monitor.observe_gradients("D", d)
            monitor.observe_gradients("G", g)
            if step % 4 == 1:
                monitor.observe_samples(fake[:1].expand_as(fake) if step >= 33 else fake, real)
            monitor.observe(real_logits=real_logits, fake_logits=fake_logits, d_loss=d_loss, g_loss=g_loss)
            if monitor.step % monitor.every == 0:  # a check just ran: reading warnings runs none
                checks.append((monitor.step, monitor.warnings))
    return checks, [str(w.message) for w in raised if w.category is StabilityWarning]


def test_a_run_resumed_from_a_checkpoint_checks_and_warns_as_the_uninterrupted_run():
    # Without a state, a restarted run lost the history, first_seen (every warning raised again), the
    # sigma baselines (taken again from weights that had grown: exploding_sigma missed), u, v and the
    # generator's place (other subsamples).
    d, g = resumable_gan()
    uninterrupted = StabilityMonitor(d, g, **RESUMABLE)
    run_resumable(uninterrupted, d, g, range(28))  # saved mid-window: 3 steps and a sample batch pending
    buffer = io.BytesIO()
    torch.save({"D": d.state_dict(), "G": g.state_dict(), "monitor": uninterrupted.state_dict()}, buffer)
    expected_checks, expected_raised = run_resumable(uninterrupted, d, g, range(28, 45))
    assert uninterrupted.first_seen == {"exploding_sigma": 25, "mode_collapse": 40}
    assert len(expected_raised) == 1 and "mode_collapse at step 40" in expected_raised[0]
    grown_g = [w for _, issues in expected_checks for w in issues if w.evidence.get("layer") == "sigma/G/2.weight"]
    assert grown_g and grown_g[0].step == 35

    def restart(load):
        buffer.seek(0)
        checkpoint = torch.load(buffer, weights_only=True)  # plain values and tensors only
        d, g = resumable_gan()
        d.load_state_dict(checkpoint["D"])
        g.load_state_dict(checkpoint["G"])
        monitor = StabilityMonitor(d, g, **RESUMABLE)
        if load:
            monitor.load_state_dict(checkpoint["monitor"])
        return monitor, d, g

    resumed, d, g = restart(load=True)
    assert resumed.step == 28
    # Bitwise: the same computations on the same values, on the CPU.
    assert run_resumable(resumed, d, g, range(28, 45)) == (expected_checks, expected_raised)
    assert resumed.history == uninterrupted.history
    assert resumed.first_seen == uninterrupted.first_seen
    assert resumed.report() == uninterrupted.report() and resumed.warnings == uninterrupted.warnings
    # What the state restores: a monitor started afresh counts the steps from 0 and takes its sigma
    # baselines from the grown weights, which misses both layers' growth.
    fresh, d, g = restart(load=False)
    run_resumable(fresh, d, g, range(28, 45))
    assert fresh.first_seen == {"mode_collapse": 10}


# Read from only the latest 4 checks (patience + 1, oscillation_windows) in run_resumable's 9.
SHORT_READS = Thresholds(sigma_baseline_checks=1, oscillation_windows=4, oscillation_crossings=2)


# Each of patience + 1 and oscillation_windows the larger in turn: 5 checks read. patience 4 takes the
# 4 collapsed sample batches of 10 checks to flag mode_collapse.
@pytest.mark.parametrize("patience, windows", [(2, 5), (4, 4)])
def test_a_bounded_history_keeps_the_latest_checks_and_the_same_verdicts(patience, windows):
    # history grew by one record per check for the whole run (days: hundreds of MB, in every
    # checkpoint's state too).
    assert StabilityMonitor(torch.nn.Linear(2, 1)).max_history == gan_kernels.monitor.MAX_HISTORY
    thresholds = dataclasses.replace(SHORT_READS, patience=patience, oscillation_windows=windows)
    runs = {}
    for max_history in (None, 6, 1):  # 1: fewer than the conditions read (5 checks), which are kept
        d, g = resumable_gan()
        monitor = StabilityMonitor(d, g, **dict(RESUMABLE, thresholds=thresholds), max_history=max_history)
        runs[max_history] = run_resumable(monitor, d, g, range(50)), monitor
    expected, unbounded = runs[None]
    assert len(unbounded.history) == 10 and set(unbounded.first_seen) == {"exploding_sigma", "mode_collapse"}
    for max_history, kept in ((6, 6), (1, 5)):
        checks, monitor = runs[max_history]
        assert checks == expected
        assert monitor.history == unbounded.history[-kept:]
        assert monitor.first_seen == unbounded.first_seen


def test_a_longer_history_in_a_state_is_cut_to_the_monitors_bound():
    d, g = resumable_gan()
    saved = StabilityMonitor(d, g, **dict(RESUMABLE, thresholds=SHORT_READS), max_history=None)
    run_resumable(saved, d, g, range(30))
    d2, g2 = resumable_gan()
    d2.load_state_dict(d.state_dict())
    g2.load_state_dict(g.state_dict())
    bounded = StabilityMonitor(d2, g2, **dict(RESUMABLE, thresholds=SHORT_READS), max_history=4)
    bounded.load_state_dict(saved.state_dict())
    assert len(saved.history) == 6 and bounded.history == saved.history[-4:]
    assert run_resumable(bounded, d2, g2, range(30, 45)) == run_resumable(saved, d, g, range(30, 45))
    assert bounded.history == saved.history[-4:] and bounded.first_seen == saved.first_seen


def test_a_monitor_loaded_at_a_check_reports_and_warns_as_the_saved_one():
    d, g = resumable_gan()
    monitor = StabilityMonitor(d, g, **RESUMABLE)
    run_resumable(monitor, d, g, range(25))  # the check at step 25 flags exploding_sigma
    resumed = StabilityMonitor(d, g, **RESUMABLE)
    resumed.load_state_dict(monitor.state_dict())
    assert [w.name for w in resumed.warnings] == ["exploding_sigma"] and resumed.warnings == monitor.warnings
    assert resumed.report() == monitor.report() and len(resumed.history) == 5


def test_the_largest_generator_gradient_norm_outlives_a_resume():
    # It may lie further back than the checks that vanishing_generator_gradient reads from the history:
    # 100, then 2 (2% of it: not vanishing) until the checkpoint, then 0.5 (0.5% of 100, 25% of 2).
    d, g = torch.nn.Linear(2, 1), torch.nn.Linear(4, 4)

    def observe(monitor, norms):
        for norm in norms:
            for p in g.parameters():
                p.grad = torch.full_like(p, norm / math.sqrt(20))  # 20 elements
            monitor.observe_gradients("G", g)
            # D classifies everything correctly, as vanishing_generator_gradient requires.
            run_quietly(monitor.observe, real_logits=torch.full((8,), 5.0), fake_logits=torch.full((8,), -5.0))

    monitor = StabilityMonitor(d, every=1)
    observe(monitor, [100.0] + [2.0] * 4)
    assert "vanishing_generator_gradient" not in monitor.first_seen
    resumed = StabilityMonitor(d, every=1)
    resumed.load_state_dict(monitor.state_dict())
    observe(resumed, [0.5] * 3)
    assert resumed.history[-1]["grad_norm/G"] == pytest.approx(0.5)
    assert "vanishing_generator_gradient" in resumed.first_seen


def test_a_state_is_a_snapshot_sharing_no_tensor_with_the_networks_or_the_monitor():
    d, g = resumable_gan()
    monitor = StabilityMonitor(d, g, **RESUMABLE)
    run_resumable(monitor, d, g, range(7))
    state = monitor.state_dict()
    saved = copy.deepcopy(state)

    def tensors(value):
        if isinstance(value, torch.Tensor):
            return [value]
        items = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else []
        return [t for item in items for t in tensors(item)]

    storages = {t.untyped_storage().data_ptr() for t in tensors(state)}
    theirs = {t.untyped_storage().data_ptr() for net in (d, g) for t in [*net.parameters(), *net.buffers()]}
    assert storages and not storages & theirs
    run_resumable(monitor, d, g, range(7, 20))  # checks, u, v moved on, a new window: the state stays
    assert len(state["history"]) == 1 and state["step"] == 7
    assert all(torch.equal(a, b) for a, b in zip(tensors(state), tensors(saved), strict=True))


def test_a_state_loads_onto_the_networks_current_dtype():
    d = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Linear(5, 2))
    monitor = StabilityMonitor(d, every=1)
    monitor.observe(d_loss=1.0)
    state = monitor.state_dict()
    resumed = StabilityMonitor(d, every=1)
    d.double()  # after the monitor was built: its u, v are float32
    resumed.load_state_dict(state)
    assert all(layer.u.dtype == layer.v.dtype == torch.float64 for layer in resumed._layers)
    for _ in range(10):
        resumed.observe(d_loss=1.0)
    for name in ("0", "1"):
        expected = float(torch.linalg.matrix_norm(d.get_submodule(name).weight.detach(), 2))
        assert resumed.report()[f"sigma/D/{name}.weight"] == pytest.approx(expected, rel=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_state_from_a_cpu_run_loads_onto_networks_on_cuda():
    d = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Linear(5, 2))
    monitor = StabilityMonitor(d, every=2)
    monitor.observe(d_loss=1.0)
    monitor.observe(d_loss=1.0)
    monitor.observe(d_loss=2.0)  # an open window, summed on the CPU
    state = monitor.state_dict()
    d.cuda()
    resumed = StabilityMonitor(d, every=2)
    resumed.load_state_dict(state)
    assert all(layer.u.is_cuda and layer.v.is_cuda for layer in resumed._layers)
    resumed.observe(real_logits=torch.randn(4, device="cuda"), d_loss=torch.tensor(4.0, device="cuda"))
    assert resumed._totals.is_cuda
    report = resumed.report()
    assert report["step"] == 4 and report["d_loss"] == 3.0 and len(resumed.history) == 2


def test_the_statistics_accumulate_on_the_device_of_the_observed_values():
    # They stayed on the device D had when the monitor was built: after D.cuda(), every step copied its
    # values to the CPU, which waits for the GPU. The meta device stands in for the GPU here (nothing is
    # read back before a check).
    d = torch.nn.Linear(2, 1)
    monitor = StabilityMonitor(d, every=100)
    d.to("meta")
    logits = d(torch.randn(4, 2, device="meta"))
    logits.sum().backward()
    monitor.observe_gradients("D", d)
    monitor.observe(real_logits=logits.detach(), fake_logits=-logits.detach(), d_loss=0.5)
    assert monitor._totals.device.type == "meta"


def test_the_statistics_stay_on_the_accelerator_when_a_value_is_on_the_cpu():
    # A CPU 0-d loss observed before GPU gradient norms moved the sums to the CPU: every step then
    # copied the norms to the host, a sync. The meta device stands in for the GPU.
    d = torch.nn.Linear(2, 1)
    monitor = StabilityMonitor(d, every=100)
    d.to("meta")
    d(torch.randn(4, 2, device="meta")).sum().backward()
    monitor.observe_gradients("D", d)
    monitor.observe(d_loss=torch.tensor(0.5))
    assert monitor._totals.device.type == "meta"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_monitor_built_before_d_cuda_observes_on_cuda_without_a_host_sync():
    d = torch.nn.Linear(2, 1)
    monitor = StabilityMonitor(d, every=100)
    d.cuda()
    cpu_loss = torch.tensor(0.25)
    for step in range(4):
        logits = d(torch.randn(4, 2, device="cuda"))
        d.zero_grad()
        logits.sum().backward()
        # The first step builds the slot index, a copy from the host, once; the later ones sync never.
        torch.cuda.set_sync_debug_mode("error" if step else "default")
        try:
            monitor.observe_gradients("D", d)
            # A number and a CPU tensor beside the CUDA values: both filled in on the GPU.
            monitor.observe(real_logits=logits.detach(), fake_logits=logits.detach(), d_loss=0.5, g_loss=cpu_loss)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert monitor._totals.is_cuda
    report = monitor.report()
    assert report["step"] == 4 and report["d_loss"] == 0.5 and report["d_accuracy"] == 0.5


def test_a_state_for_other_layers_or_settings_is_refused_naming_the_difference():
    d = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    monitor = StabilityMonitor(d, every=5)
    monitor.observe(d_loss=0.5)
    state = monitor.state_dict()
    renamed = StabilityMonitor(torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 1)), every=5)
    with pytest.raises(
        ValueError, match=r"missing from the state \['D/1.weight'\], unexpected in the state \['D/2.weight'\]"
    ):
        renamed.load_state_dict(state)
    wider = StabilityMonitor(
        torch.nn.Sequential(torch.nn.Linear(4, 9), torch.nn.ReLU(), torch.nn.Linear(9, 1)), every=5
    )
    with pytest.raises(ValueError, match=r"layer D/0.weight: u has shape \[8\] in the state, \[9\] in this monitor"):
        wider.load_state_dict(state)
    with pytest.raises(ValueError, match="every: 5 in the state, 10 in this monitor"):
        StabilityMonitor(d, every=10).load_state_dict(state)
    stricter = StabilityMonitor(d, every=5, thresholds=Thresholds(patience=3))
    with pytest.raises(ValueError, match="thresholds.patience: 2 in the state, 3 in this monitor"):
        stricter.load_state_dict(state)
    with pytest.raises(ValueError, match="not a StabilityMonitor.state_dict"):
        stricter.load_state_dict(d.state_dict())
    # A refused state changes nothing.
    assert stricter.step == 0 and stricter.history == [] and stricter.thresholds.patience == 3


def test_a_state_saved_before_a_thresholds_field_was_added_loads_as_with_its_default():
    # A state saved before oscillation_periodicity existed has no value for it, which "differed" from
    # every monitor's: no checkpoint of an earlier version could be resumed.
    d = torch.nn.Linear(3, 1)
    saved = StabilityMonitor(d, every=5)
    for step in range(12):
        saved.observe(d_loss=0.5 + 0.01 * step)
    state = saved.state_dict()
    del state["settings"]["thresholds.oscillation_periodicity"]
    resumed = StabilityMonitor(d, every=5)
    resumed.load_state_dict(state)
    assert resumed.step == 12 and resumed.history == saved.history
    stricter = StabilityMonitor(d, every=5, thresholds=Thresholds(oscillation_periodicity=0.95))
    with pytest.raises(
        ValueError,
        match=r"thresholds.oscillation_periodicity: 0.9 \(absent: the default\) in the state, 0.95 in this monitor",
    ):
        stricter.load_state_dict(state)
    del state["settings"]["every"]  # not a threshold: absent is no default
    with pytest.raises(ValueError, match="every: 'absent' in the state, 5 in this monitor"):
        resumed.load_state_dict(state)


def _assert_same_state(a, b):
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], dict):
            _assert_same_state(a[key], b[key])
        elif isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), key
        elif isinstance(a[key], list) and a[key] and isinstance(a[key][0], torch.Tensor):
            assert all(torch.equal(x, y) for x, y in zip(a[key], b[key])) and len(a[key]) == len(b[key]), key
        else:
            assert a[key] == b[key], key


def test_a_malformed_state_is_refused_and_leaves_the_monitor_as_it_was():
    """A malformed entry found after the first fields were assigned (the warnings, the generator
    state) left the monitor half loaded; a layer entry without u was a bare KeyError."""
    torch.manual_seed(0)
    d = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    saved = StabilityMonitor(d, every=5)
    for step in range(12):
        saved.observe(d_loss=0.5 + 0.01 * step)
    monitor = StabilityMonitor(d, every=5)
    monitor.observe(d_loss=1.0)
    before = monitor.state_dict()
    for corrupt in (
        lambda state: state["current"].append({"not": "an issue"}),
        lambda state: state.update(generator=torch.zeros(3)),
        lambda state: state["window"].pop("diversity"),
    ):
        state = saved.state_dict()
        corrupt(state)
        with pytest.raises(ValueError, match="the state is malformed .*; the monitor is left as it was"):
            monitor.load_state_dict(state)
        _assert_same_state(monitor.state_dict(), before)
    for entry in ("settings", "layers", "window"):
        state = saved.state_dict()
        state[entry] = [state[entry]]
        with pytest.raises(ValueError, match=f"the state's {entry} must be a dict, got list"):
            monitor.load_state_dict(state)
        _assert_same_state(monitor.state_dict(), before)
    state = saved.state_dict()
    del state["layers"]["D/0.weight"]["u"]
    with pytest.raises(ValueError, match=r"layer D/0.weight: expected keys \['u', 'v'\], got \['v'\]"):
        monitor.load_state_dict(state)
    _assert_same_state(monitor.state_dict(), before)


def _run_with_overflows(scaler, overflowing_steps, steps=10, every=5, state_at=None):
    """Steps of a D whose gradients a GradScaler's overflow made Inf/NaN on ``overflowing_steps``
    (the steps the scaler skips), with the penalty from the scaled outputs non-finite there too.
    With ``state_at``, the monitor is saved after that many steps and a fresh one continues."""
    torch.manual_seed(0)
    d = torch.nn.Linear(3, 1)
    make = lambda: StabilityMonitor(d, every=every, scaler=scaler)  # noqa: E731
    monitor = make()
    for step in range(steps):
        if step == state_at:
            resumed = make()
            resumed.load_state_dict(monitor.state_dict())
            monitor = resumed
        overflow = step in overflowing_steps
        d.weight.grad = torch.full_like(d.weight, math.inf if overflow else 0.1 * (step + 1))
        d.bias.grad = torch.full_like(d.bias, math.nan if overflow else 0.0)
        monitor.observe_gradients("D", d)
        penalty = math.inf if overflow else 0.5
        logits = torch.tensor([1.0, -1.0, 0.5, -0.5])  # D at chance
        monitor.observe(real_logits=logits, fake_logits=-logits, d_loss=1.0, penalty=penalty)
    return monitor


def test_a_gradscaler_run_is_not_flagged_for_the_steps_the_scaler_skips():
    """A healthy fp16 run: the scaler skips a few steps (gradients overflowed), and observe_gradients
    after scaler.unscale_ sees their Inf/NaN. Every such run was flagged non_finite, and the README's
    DDP recipe stopped it."""
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    with warnings.catch_warnings():
        warnings.simplefilter("error", StabilityWarning)
        monitor = _run_with_overflows(scaler, overflowing_steps={0, 1, 7})
        assert monitor.warnings == []
    first, second = monitor.history
    assert first["overflowed/grad_norm/D"] == 2 and second["overflowed/grad_norm/D"] == 1
    assert first["overflowed/penalty"] == 2 and first["penalty"] == 0.5
    # The mean of the steps the scaler took: 0.1 * (step + 1) * sqrt(3) for steps 2, 3, 4.
    assert first["grad_norm/D"] == pytest.approx(0.4 * math.sqrt(3), rel=1e-6)  # float32 norms
    assert first["_counts"]["grad_norm/D"] == 3
    assert second["overflowed/grad_norm/D"] == 1 and second["_counts"]["grad_norm/D"] == 4
    # Saved and resumed mid-window, the checks are the same.
    resumed = _run_with_overflows(scaler, overflowing_steps={0, 1, 7}, state_at=6)
    assert resumed.history == monitor.history


@pytest.mark.parametrize(
    "scaler, overflowing_steps",
    [
        (None, {8}),  # without a scaler one Inf is non_finite at once
        ("disabled", {8}),  # a disabled scaler skips nothing
        ("enabled", {5, 6, 7, 8, 9}),  # every step of the second check overflowed: the run is stalled
    ],
)
def test_non_finite_gradients_are_flagged_without_a_scaler_or_when_every_step_overflowed(scaler, overflowing_steps):
    scaler = None if scaler is None else torch.amp.GradScaler("cpu", enabled=scaler == "enabled")
    with pytest.warns(StabilityWarning, match="non_finite"):
        monitor = _run_with_overflows(scaler, overflowing_steps)
    issue = next(w for w in monitor.warnings if w.name == "non_finite")
    assert "grad_norm/D" in issue.evidence["signals"] and "penalty" in issue.evidence["signals"]


def test_a_scaler_must_be_a_gradscaler():
    with pytest.raises(TypeError, match="scaler must be a torch.amp.GradScaler, got float"):
        StabilityMonitor(torch.nn.Linear(2, 1), scaler=2.0**16)


def test_a_window_saved_before_the_finite_counts_loads():
    d = torch.nn.Linear(3, 1)
    monitor = StabilityMonitor(d, every=5)
    for _ in range(7):
        monitor.observe(d_loss=1.0)
    state = monitor.state_dict()
    state["window"]["totals"] = state["window"]["totals"][: 2 * len(gan_kernels.monitor._SLOTS)]
    resumed = StabilityMonitor(d, every=5)
    resumed.load_state_dict(state)
    for m in (monitor, resumed):
        for _ in range(3):
            m.observe(d_loss=2.0)
    assert resumed.history[-1] == monitor.history[-1]
    assert resumed.history[-1]["d_loss"] == pytest.approx(1.6)
