"""A training monitor that names the failure signs of GAN training the literature lists, with the
evidence and the remedies, cheaply enough to leave on.

    monitor = StabilityMonitor(D, G, every=50)
    for step in ...:
        ...                                           # D step
        monitor.observe_gradients("D", D)             # after loss_d.backward()
        ...                                           # G step
        monitor.observe_gradients("G", G)
        monitor.observe(real_logits=r, fake_logits=f, d_loss=loss_d, g_loss=loss_g, penalty=r1)
        if step % 500 == 0:
            monitor.observe_samples(fake, real)
    print(monitor.report(), monitor.warnings)
    monitor.plot("dashboard.png")

Call ``observe`` once per training step (D and G values together). Per-step statistics are
accumulated on the observed values' device (following them, also to a GPU that D moved to after the
monitor was built) without a host sync; the host reads them every ``every`` steps (a check:
the only place the monitor syncs, a few times), and whenever ``report()`` or ``warnings`` is read.
At each such check the monitor also estimates the spectral norm of every weight (2-D or more) of D
and G with one batched power-iteration call per device and dtype, on persistent u, v (started afresh
for a layer whose sigma came out NaN, Inf or 0).

Conditions (``Thresholds`` holds every number; each condition must hold in ``patience`` checks in a
row, except ``non_finite``, flagged at the first check after one NaN/Inf, and ``oscillation``,
judged on its window of checks):

* ``non_finite``: a NaN or Inf in any observed value (any sample batch's diversity) or spectral norm;
  with ``scaler=``, a gradient norm's or penalty's only where all its values in the check overflowed.
* ``discriminator_overpowering``: D classifies (by the sign of its logit) at least
  ``overpowering_accuracy`` of the real and fake samples correctly: D(real) -> 1, D(fake) -> 0. A
  WGAN critic's scores have no such threshold: observe its losses, not its scores, and neither this
  nor ``vanishing_generator_gradient`` is judged.
* ``vanishing_generator_gradient``: G's gradient norm below ``vanishing_gradient_ratio`` of the
  largest value it has had, while D classifies at least ``vanishing_accuracy`` of the samples
  correctly (at a solved game's equilibrium the gradients vanish too, with D at chance).
* ``oscillation``: the logit gap (mean real logit - mean fake logit; the D loss when no logits are
  observed) keeps cycling, neither settling nor wandering (a drifting gap is normal in a healthy
  run). Judged on its last ``oscillation_windows`` checks alone (not in ``patience`` checks in a
  row): their check means less their least-squares line (a drift or a trend is no cycle) cross 0 at
  least ``oscillation_crossings`` times; vary ``oscillation_contrast`` times more than the noise of a
  check mean would make them (their sum of squares / (windows - 2) over the unbiased within-check
  variance / the observations in the check: about 1 for noise around a fixed point or a line); one
  sinusoid of at least 2 cycles per window (a period of at most windows / 2 checks; least-squares
  fits at frequencies 0.1 cycles per window apart) explains at least ``oscillation_periodicity`` of
  that sum of squares (a random walk's or a mean-reverting wander's spreads over many frequencies);
  and the amplitude (root mean square) of the later half is at least ``oscillation_decay`` of the
  earlier half's (a damped oscillation is settling). The evidence gives the fitted sinusoid's share
  (``periodicity``) and ``period`` in checks. Checks with a single observation of the signal
  (``every=1``) carry no within-check variance and are left out; without any other, oscillation is
  not judged.
* ``mode_collapse``: the diversity (mean pairwise distance of generated samples over that of real
  ones, on subsamples) below ``collapse_diversity`` in ``patience`` observe_samples calls in a row
  (a NaN diversity is ``non_finite``, not below it).
* ``exploding_sigma``: a layer's spectral norm grew ``sigma_growth`` times over its largest value in
  the first ``sigma_baseline_checks`` checks with a finite, positive one and grew in each of the last
  ``patience`` checks (spectrally normalised layers: the normalised sigma, which should stay 1). A
  sigma of 0 (a weight initialised at zero) is left out of the baseline as a NaN is: growth relative
  to 0 says nothing, and would flag a zero-initialised layer at its first steps.
"""

import copy
import dataclasses
import functools
import math
import warnings as python_warnings

import torch
from torch.nn.utils import parametrize

from . import _checks
from ._module_state import is_spectral_norm
from .ops.spectral_norm import spectral_norm_power_iteration_


class StabilityWarning(UserWarning):
    """A GAN failure sign detected by :class:`StabilityMonitor`, raised the first time it appears."""


# Each range is where its condition can both fire and stay quiet: outside it the monitor never (or
# always) flags it, or fails at a check (no sigma baseline, a window too short to vary). Each check
# returns a plain int or float, so a 0-d tensor does not turn the comparisons into tensors.
_THRESHOLD_CHECKS = {
    "overpowering_accuracy": lambda value, arg: _checks.interval(value, arg, 0, 1, low_open=True),
    # A ratio above 1 calls a steady gradient norm vanishing; at 0 no norm is below it.
    "vanishing_gradient_ratio": lambda value, arg: _checks.interval(value, arg, 0, 1, low_open=True),
    # 0 turns the accuracy gate off, which leaves a condition that can still stay quiet.
    "vanishing_accuracy": lambda value, arg: _checks.interval(value, arg, 0, 1),
    # Four check means at least: the line taken out takes two, and the fastest cycle (a period of 2
    # checks) at 2 cycles per window takes four.
    "oscillation_windows": lambda value, arg: _checks.count(value, arg, minimum=4),
    "oscillation_crossings": _checks.count,
    "oscillation_contrast": _checks.positive,
    # Above 1 an oscillation of constant amplitude would count as settling.
    "oscillation_decay": lambda value, arg: _checks.interval(value, arg, 0, 1),
    # 0 turns the periodicity test off; a share of 1 takes a noiseless sinusoid at one of the fitted
    # frequencies, which no run gives.
    "oscillation_periodicity": lambda value, arg: _checks.interval(value, arg, 0, 1, high_open=True),
    # Diversity is not bounded by 1 (G may spread wider than the data), so neither is its threshold.
    "collapse_diversity": _checks.positive,
    # Below 1 a sigma that rose back towards its baseline would be "exploding".
    "sigma_growth": lambda value, arg: _checks.interval(value, arg, 1, math.inf, high_open=True),
    "sigma_baseline_checks": _checks.count,
    "patience": _checks.count,
}


@dataclasses.dataclass
class Thresholds:
    """When each condition is flagged (see the module docstring for the tests they drive).

    Every assignment is checked, at construction and later (``thresholds.patience = 3``), and a value
    refused is not stored: a monitor reads its Thresholds at every check, so an unchecked later value
    would make it never (or always) flag a condition."""

    overpowering_accuracy: float = 0.97
    vanishing_gradient_ratio: float = 0.01
    vanishing_accuracy: float = 0.9
    oscillation_windows: int = 16
    oscillation_crossings: int = 4
    oscillation_contrast: float = 20.0
    oscillation_decay: float = 0.5
    oscillation_periodicity: float = 0.9
    collapse_diversity: float = 0.2
    sigma_growth: float = 10.0
    sigma_baseline_checks: int = 3
    patience: int = 2

    def __setattr__(self, name, value):
        # The dataclass's __init__ (and so dataclasses.replace) assigns each field through here too.
        check = _THRESHOLD_CHECKS.get(name)
        if check is None:
            # A misspelt field (t.patiense = 5) would be stored beside the real one, which kept its value.
            raise AttributeError(f"Thresholds has no field {name!r}; its fields are {', '.join(_THRESHOLD_CHECKS)}")
        value = check(value, name)
        if name in ("oscillation_windows", "oscillation_crossings"):
            # From the instance only: before __init__ has set both, the other one's class default is
            # not the value it is about to get. __init__ sets windows first, so the pair is checked
            # once both are known.
            pair = {**vars(self), name: value}
            if "oscillation_windows" in pair and "oscillation_crossings" in pair:
                windows, crossings = pair["oscillation_windows"], pair["oscillation_crossings"]
                if crossings > windows - 1:
                    raise ValueError(
                        f"oscillation_crossings must be <= {windows - 1} (oscillation_windows - 1: the "
                        f"most crossings {windows} check means can make), got {crossings}"
                    )
        super().__setattr__(name, value)


REMEDIES = {
    "non_finite": (
        "lower the learning rates (or use TTUR: D faster than G, both smaller)",
        "bound D: a gradient penalty (R1/R2, WGAN-GP) or spectral normalisation",
        "use gan_kernels.losses (softplus forms) instead of log(sigmoid(x)) losses",
        "with fp16: a GradScaler, penalties from the scaled outputs (scaler= argument), conv_clamp",
    ),
    "discriminator_overpowering": (
        "regularise D: R1 (gamma ~ 0.1-10 depending on the data's scale) or R2, or WGAN-GP",
        "spectral normalisation of D's layers",
        "the non-saturating or a relativistic loss (relativistic_pairing, R3GAN) instead of minimax",
        "lower D's learning rate or give G more steps (TTUR)",
    ),
    "vanishing_generator_gradient": (
        "the non-saturating G loss (not log(1 - D(G(z))), which saturates when D wins)",
        "a relativistic (relativistic_pairing) or Wasserstein loss",
        "regularise D (R1, WGAN-GP, spectral norm) so it stays smooth around the fakes",
    ),
    "oscillation": (
        "a zero-centred gradient penalty: R1 (and R2), which makes the Dirac-GAN converge",
        "WGAN-GP, or lower learning rates / TTUR",
        "lazy regularisation keeps R1's cost low (LazyRegularizer)",
    ),
    "mode_collapse": (
        "regularise D: R1/R2 or WGAN-GP (a smoother D spreads G's gradient over the data)",
        "minibatch standard deviation in D's last block (gan_kernels.nn.MinibatchStd)",
        "a relativistic loss (relativistic_pairing, R3GAN)",
        "lower G's learning rate",
    ),
    "exploding_sigma": (
        "spectral normalisation of the layer (gan_kernels.nn.spectral_norm)",
        "a gradient penalty (R1, WGAN-GP), which bounds D's slope",
        "lower the learning rate, or weight decay on that layer",
    ),
}

CONDITIONS = tuple(REMEDIES)


@dataclasses.dataclass(frozen=True)
class StabilityIssue:
    """A detected condition: its ``name`` (one of CONDITIONS), the ``step`` it was detected at, the
    ``evidence`` (numbers) and the ``remedies`` the literature gives."""

    name: str
    step: int
    evidence: dict
    remedies: tuple

    def __str__(self):
        evidence = ", ".join(f"{k}={_format(v)}" for k, v in self.evidence.items())
        return f"{self.name} at step {self.step} ({evidence}); remedies: " + "; ".join(self.remedies)


def _format(value):
    return f"{value:.4g}" if isinstance(value, float) else str(value)


# Per-step values accumulated on the device, one slot each.
_SLOTS = (
    "real_logit_mean",
    "fake_logit_mean",
    "logit_gap",
    "d_accuracy",
    "d_loss",
    "g_loss",
    "penalty",
    "grad_norm/D",
    "grad_norm/G",
)
_SLOT = {name: index for index, name in enumerate(_SLOTS)}
# The values that come from gradients, which a GradScaler's overflow makes non-finite on each step it
# skips (with a scaler= monitor, such a step is left out of the check's mean and counted).
_SCALED_SLOTS = ("penalty", "grad_norm/D", "grad_norm/G")

_CONV_TRANSPOSE = (torch.nn.ConvTranspose1d, torch.nn.ConvTranspose2d, torch.nn.ConvTranspose3d)


@dataclasses.dataclass
class _Layer:
    """One weight whose spectral norm the monitor tracks."""

    name: str
    weight: torch.Tensor  # the stored parameter (for spectral norm: the original); None if computed
    dim: int
    u: torch.Tensor
    v: torch.Tensor
    normalisation: object  # the spectral-norm parametrization, or None
    # (module, name) of a weight computed by another parametrization (weight norm: no one stored
    # tensor is the weight), read from the module at each check; None for a stored weight.
    computed: tuple = None

    def current(self):
        """The weight as the layer's forward uses it now (for spectral norm: the original)."""
        if self.computed is None:
            return self.weight
        module, name = self.computed
        with torch.no_grad():
            return getattr(module, name)


def _detrended(values):
    """``values`` less their least-squares line over their index."""
    n = len(values)
    centred = [i - (n - 1) / 2 for i in range(n)]
    mean = sum(values) / n
    slope = sum(c * v for c, v in zip(centred, values)) / sum(c * c for c in centred)
    return [v - mean - slope * c for v, c in zip(values, centred)]


# The frequencies _periodicity tries are this many cycles per window apart: one between two of them
# correlates with the nearer at sin(pi x) / (pi x), x <= 0.05, and keeps over 99% of its share.
_CYCLES_STEP = 0.1


@functools.lru_cache(maxsize=4)
def _sinusoids(n):
    """For each frequency from 2 cycles per ``n`` values to n / 2 (a period of 2), ``_CYCLES_STEP``
    apart: (cycles, unit vectors spanning its cosine and sine over the n values, made orthogonal to
    every line and to each other). At n / 2 the sine is 0 at every value and only the cosine is kept."""
    index = range(n)

    def dot(a, b):
        return sum(x * y for x, y in zip(a, b))

    def unit(vector, basis):
        for b in basis:
            projection = dot(vector, b)
            vector = [x - projection * y for x, y in zip(vector, b)]
        norm = math.sqrt(dot(vector, vector))
        return [x / norm for x in vector] if norm > 1e-6 * math.sqrt(n) else None

    line = [unit([1.0] * n, []), unit([i - (n - 1) / 2 for i in index], [])]
    sinusoids = []
    for multiple in range(round(2 / _CYCLES_STEP), round(n / 2 / _CYCLES_STEP) + 1):
        cycles = multiple * _CYCLES_STEP
        basis = list(line)
        for wave in (math.cos, math.sin):
            vector = unit([wave(2 * math.pi * cycles * i / n) for i in index], basis)
            if vector is not None:
                basis.append(vector)
        sinusoids.append((cycles, tuple(basis[2:])))
    return tuple(sinusoids)


def _periodicity(deviations):
    """The largest share of ``sum(d * d)`` (``deviations``: not all 0, and holding no line) that one
    sinusoid of at least 2 cycles per window explains (its least-squares fit), and its cycles per
    window. Fisher's test for a hidden periodicity, over frequencies between the Fourier ones too: a
    cycle fills one frequency, while a random walk's or a mean-reverting wander's variance spreads
    over many."""
    cycles, explained = max(
        (
            (cycles, sum(sum(x * y for x, y in zip(vector, deviations)) ** 2 for vector in basis))
            for cycles, basis in _sinusoids(len(deviations))
        ),
        key=lambda fit: fit[1],
    )
    return explained / sum(d * d for d in deviations), cycles


def _tracked_layers(network, prefix, generator):
    layers = []
    for module_name, module in network.named_modules():
        if isinstance(module, parametrize.ParametrizationList):
            continue  # its original is reached through the parametrized module
        normalised, computed = {}, []
        if parametrize.is_parametrized(module):
            for name, parametrizations in module.parametrizations.items():
                first = parametrizations[0]
                if is_spectral_norm(first):
                    normalised[name] = (parametrizations.original, first)
                else:
                    # Weight norm and the like: their originals (g, v) are no weight of the layer's,
                    # and were not tracked at all; the weight they make is.
                    with torch.no_grad():
                        computed.append((name, getattr(module, name)))
        for name, weight, is_computed in (
            [(name, weight, False) for name, weight in module.named_parameters(recurse=False)]
            + [(name, original, False) for name, (original, _) in normalised.items()]
            + [(name, weight, True) for name, weight in computed]
        ):
            if weight.dim() < 2 or not weight.dtype.is_floating_point or weight.numel() == 0:
                continue  # an empty weight (Linear(5, 0)) has no spectral norm to watch
            normalisation = normalised.get(name, (None, None))[1]
            dim = normalisation.dim if normalisation is not None else int(isinstance(module, _CONV_TRANSPOSE))
            qualified = f"{module_name}.{name}" if module_name else name
            u, v = _start_vectors(weight, dim, generator)
            stored, computed_by = (None, (module, name)) if is_computed else (weight, None)
            layers.append(_Layer(f"{prefix}/{qualified}", stored, dim, u, v, normalisation, computed_by))
    return layers


def _start_vectors(weight, dim, generator):
    """Random unit u, v for the power iteration on ``weight`` (``dim`` first, the rest flattened)."""
    rows = weight.shape[dim]
    # Own generator: the monitor must not change the training run's random numbers.
    u = torch.randn(rows, generator=generator).to(weight.device, weight.dtype)
    v = torch.randn(weight.numel() // rows, generator=generator).to(weight.device, weight.dtype)
    return u / u.norm(), v / v.norm()


# The power iteration's warm-up (as torch's spectral norm at registration) and the steps per check.
WARMUP_ITERATIONS = 15

# The checks StabilityMonitor.history keeps by default: 500,000 steps at every=50, 4 kB a check
# with 50 tracked weights.
MAX_HISTORY = 10_000


class StabilityMonitor:
    """Watches a GAN's training for the failure signs listed in this module's docstring.

    ``D``, ``G``: the networks (G optional) whose weights' spectral norms are tracked. ``every``:
    observed steps per check (the host syncs only at checks). ``writer``: anything with
    ``add_scalar(tag, value, step)``, e.g. a ``torch.utils.tensorboard.SummaryWriter``; it gets every
    scalar of every check.
    ``thresholds``: a :class:`Thresholds`, kept (not copied) and read at every check, so a change to
    it applies from the next check on (to every monitor given the same object); what earlier checks
    kept stays: the sigma baselines already taken, and only the latest old-``patience`` diversities
    (a larger ``patience`` fills up with the next measurements). ``sigma_iterations``:
    power-iteration steps per check. ``samples``: the subsample size for the diversity score.
    ``seed``: for the monitor's own random numbers (u, v, subsamples), so that it does not change the
    run's. ``max_history``: the most checks ``history`` keeps (the latest; None: every one), so that a
    run of days grows neither the monitor nor its state_dict (and every checkpoint) without bound; the
    writer gets every check. It keeps at least ``patience + 1`` and ``oscillation_windows`` checks,
    the most its conditions read. ``scaler``: the run's ``torch.amp.GradScaler``. An enabled one
    skips the optimiser step wherever the scaled gradients overflow, which leaves a NaN or Inf
    gradient norm (and penalty) on that step: the monitor then leaves such values out of the check's
    means and records their number as ``overflowed/<signal>``, and flags ``non_finite`` for a signal
    only where all its values in a check overflowed (that network no longer trains, or no
    regularisation step of the check was taken). Without a scaler (or with a
    disabled one), one NaN or Inf is ``non_finite`` at once.
    """

    @property
    def thresholds(self):
        """The :class:`Thresholds` read at every check; another one assigned applies from the next check."""
        return self._thresholds

    @thresholds.setter
    def thresholds(self, thresholds):
        if not isinstance(thresholds, Thresholds):
            raise TypeError(f"thresholds must be a gan_kernels.monitor.Thresholds, got {type(thresholds).__name__}")
        self._thresholds = thresholds

    def __init__(
        self,
        D,
        G=None,
        every=50,
        writer=None,
        thresholds=None,
        sigma_iterations=2,
        samples=256,
        seed=0,
        max_history=MAX_HISTORY,
        scaler=None,
    ):
        _checks.module(D, "D")
        if G is not None:
            _checks.module(G, "G")
        every = _checks.count(every, "every")
        sigma_iterations = _checks.count(sigma_iterations, "sigma_iterations")
        samples = _checks.count(samples, "samples", minimum=2)
        max_history = None if max_history is None else _checks.count(max_history, "max_history")
        if writer is not None and not callable(getattr(writer, "add_scalar", None)):
            raise TypeError(f"writer must have an add_scalar(tag, value, step) method, got {type(writer).__name__}")
        if scaler is not None:
            _checks.grad_scaler(scaler)
        # Whether a non-finite gradient value is a step the scaler skipped (its enabled flag is fixed
        # at its construction).
        self._skips_overflow = scaler is not None and bool(scaler.is_enabled())
        self.thresholds = thresholds if thresholds is not None else Thresholds()
        self.every, self.writer = every, writer
        self.sigma_iterations, self.samples = sigma_iterations, samples
        self.max_history = max_history
        # torch.Generator.manual_seed takes Python ints only ("an integer is required" for a numpy one).
        self._generator = torch.Generator().manual_seed(_checks.integer(seed, "seed"))
        self._layers = _tracked_layers(D, "D", self._generator)
        if G is not None:
            self._layers += _tracked_layers(G, "G", self._generator)
        # Made once, shared by every check's record: a key made at each check took more of a long run's
        # history than the sigma itself.
        self._sigma_keys = {
            layer.name: (f"sigma/{layer.name}", f"sigma_normalized/{layer.name}") for layer in self._layers
        }
        self._warmed_up = False
        self.step = 0  # observed steps
        self.history = []  # one dict of scalars per check, the latest max_history
        self.first_seen = {}  # condition -> step it was first detected
        self._current = []
        self._diversity = []  # a 0-d tensor per observe_samples call since the latest check
        self._latest_diversity = None
        # What the conditions need from earlier checks, kept as they go:
        self._largest_g_norm = 0.0
        self._diversities = []  # the latest `patience` diversity measurements
        self._first_sigmas = {}  # per sigma key, its values at the first `sigma_baseline_checks` checks
        # Where the statistics accumulate: the device of the latest observed tensors (D's until then).
        self._device = next(D.parameters(), torch.empty(0)).device
        self._slot_indices = {}  # (slot names, device) -> index tensor, built once per combination
        self._gradient_norms = {}  # from observe_gradients, accumulated with the next observe()
        self._reset_window()

    # --- accumulation on the device ---------------------------------------------------------------

    def _reset_window(self):
        # [sums of each slot, sums of their squares, counts of their finite values]: one tensor, read
        # in one sync. A NaN or Inf value makes its slot's sum non-finite, which is how the check sees
        # it, except a scaled slot's under a scaler, which is left out of the sums.
        self._totals = None
        self._counts = [0] * len(_SLOTS)
        self._window_steps = 0

    def _accumulate(self, values):
        """``values``: {slot: 0-d tensor or float}. Adds them to the sums on the observed tensors'
        device, no host sync."""
        observed = [value for value in values.values() if isinstance(value, torch.Tensor)]
        if observed:
            # The sums follow the observed values (D.cuda() after the monitor was built): kept elsewhere,
            # every step would copy its values to them, and a copy to the host waits for the GPU. With
            # values on the CPU and on an accelerator (a CPU loss beside GPU gradient norms), on the
            # accelerator, where the CPU values are filled in below.
            self._device = next((t.device for t in observed if t.device.type != "cpu"), observed[0].device)
        device = self._device
        if self._totals is None:
            self._totals = torch.zeros(3 * len(_SLOTS), dtype=torch.float64, device=device)
        elif self._totals.device != device:
            self._totals = self._totals.to(device)
        names = tuple(values)
        found = self._slot_indices.get((names, device))
        if found is None:
            slots = [_SLOT[name] for name in names]
            index = torch.tensor([s + part * len(_SLOTS) for part in range(3) for s in slots], device=device)
            scaled = [name in _SCALED_SLOTS for name in names]
            found = self._slot_indices[names, device] = (
                index,
                torch.tensor(scaled, device=device) if any(scaled) else None,
            )
        index, scaled = found
        # A number, or a CPU tensor's value, is filled in on the device, not copied there: a copy from
        # the host syncs with the GPU.
        tensors = [
            value
            if isinstance(value, torch.Tensor) and (value.device == device or value.device.type != "cpu")
            else torch.full((), float(value), dtype=torch.float64, device=device)
            for value in values.values()
        ]
        if any(t.dtype != tensors[0].dtype or t.device != device for t in tensors):
            tensors = [t.to(device, torch.float64) for t in tensors]
        stacked = torch.stack(tensors).to(torch.float64)
        finite = torch.isfinite(stacked)
        if self._skips_overflow and scaled is not None:
            stacked = torch.where(finite | ~scaled, stacked, 0.0)
        self._totals.index_add_(0, index, torch.cat([stacked, stacked.square(), finite.to(torch.float64)]))
        for name in names:
            self._counts[_SLOT[name]] += 1

    def observe(self, real_logits=None, fake_logits=None, d_loss=None, g_loss=None, penalty=None):
        """Records one training step's values (tensors or numbers; logits of any shape [N, ...]),
        without a host sync except at every ``every``-th step, which runs a check."""
        values = {}
        logits = {}
        for arg, tensor in (("real_logits", real_logits), ("fake_logits", fake_logits)):
            if tensor is not None:
                _checks.check_floating(tensor, arg)
                if tensor.numel() == 0:
                    raise ValueError(f"{arg} is empty (shape {list(tensor.shape)})")
                logits[arg] = tensor.detach()
        if "real_logits" in logits:
            values["real_logit_mean"] = logits["real_logits"].float().mean()
        if "fake_logits" in logits:
            values["fake_logit_mean"] = logits["fake_logits"].float().mean()
        if len(logits) == 2:
            r, f = logits["real_logits"], logits["fake_logits"]
            values["logit_gap"] = values["real_logit_mean"] - values["fake_logit_mean"]
            values["d_accuracy"] = ((r > 0).sum() + (f < 0).sum()) / (r.numel() + f.numel())
        for arg, value in (("d_loss", d_loss), ("g_loss", g_loss), ("penalty", penalty)):
            if value is not None:
                values[arg] = self._scalar(value, arg)
        if not values:
            raise ValueError("observe() needs at least one of real_logits, fake_logits, d_loss, g_loss, penalty")
        values.update(self._gradient_norms)
        self._gradient_norms = {}
        self._accumulate(values)
        self.step += 1
        self._window_steps += 1
        if self._window_steps >= self.every:
            self._check()

    def _scalar(self, value, arg):
        if isinstance(value, torch.Tensor):
            _checks.check_floating(value, arg)
            if value.numel() != 1:
                raise ValueError(f"{arg} must be a scalar (one element), got shape {list(value.shape)}")
            return value.detach().reshape(())
        return _checks.real(value, arg)

    def observe_gradients(self, network, module):
        """Records the total gradient norm of ``module``'s parameters (their ``.grad``, after a
        backward) as ``grad_norm/D`` or ``grad_norm/G`` (``network``: "D" or "G"), as part of the
        step that the next ``observe`` call ends. Under AMP, call it after ``scaler.unscale_(opt)``:
        scaled gradients' norms follow the loss scale, which changes during the run."""
        if network not in ("D", "G"):
            raise ValueError(f"network must be 'D' or 'G', got {network!r}")
        _checks.module(module, "module")
        grads = [p.grad.detach() for p in module.parameters() if p.grad is not None]
        if not grads:
            raise ValueError(
                f"module ({type(module).__name__}) has no gradients: call observe_gradients after backward()"
            )
        # In at least float32: fp16 gradients' norms overflow float16 (> 65504) long before their
        # elements do, which would read as a non-finite gradient.
        dtype = torch.float64 if any(g.dtype == torch.float64 for g in grads) else torch.float32
        norms = torch._foreach_norm(grads, dtype=dtype)
        if any(n.device != norms[0].device for n in norms):
            norms = [n.to(norms[0].device) for n in norms]
        total = torch.linalg.vector_norm(torch.stack(norms))
        self._gradient_norms[f"grad_norm/{network}"] = total

    def observe_samples(self, fake, real):
        """Records the diversity of the generated samples: the mean pairwise distance of a subsample
        of ``fake`` over that of ``real`` (1: as diverse as the data, 0: one point)."""
        _checks.check_floating(fake, "fake")
        _checks.check_floating(real, "real")
        for arg, tensor in (("fake", fake), ("real", real)):
            if tensor.dim() == 0 or tensor.shape[0] < 2:
                raise ValueError(f"{arg} needs at least 2 samples, got shape {list(tensor.shape)}")
        if fake.shape[1:] != real.shape[1:]:
            raise ValueError(f"fake has shape {list(fake.shape)} but real has shape {list(real.shape)}")
        with torch.no_grad():
            diversity = self._mean_distance(fake) / self._mean_distance(real)
        self._diversity.append(diversity)

    def _mean_distance(self, samples):
        n = min(len(samples), self.samples)
        picks = torch.randperm(len(samples), generator=self._generator)[:n].to(samples.device)
        flat = samples.detach()[picks].reshape(n, math.prod(samples.shape[1:])).float()  # [N]: one number each
        return torch.cdist(flat, flat).sum() / (n * (n - 1))

    # --- checks -----------------------------------------------------------------------------------

    def _sigmas(self):
        """{layer name: raw sigma} and {layer name: normalised sigma} for the spectrally normalised
        ones, from one power-iteration call per (device, dtype)."""
        groups = {}
        for layer in self._layers:
            weight = layer.current()
            if layer.u.dtype != weight.dtype or layer.u.device != weight.device:
                # The network was converted after the monitor was built (D.double(), D.to(device)):
                # module.to() converts its parameters in place; the iteration goes on from u, v.
                layer.u, layer.v = layer.u.to(weight.device, weight.dtype), layer.v.to(weight.device, weight.dtype)
            groups.setdefault((weight.device, weight.dtype), []).append((layer, weight))
        iterations = self.sigma_iterations + (0 if self._warmed_up else WARMUP_ITERATIONS)
        self._warmed_up = True
        raw, normalised = {}, {}
        for members in groups.values():
            layers = [layer for layer, _ in members]
            sigmas = spectral_norm_power_iteration_(
                [weight.detach() for _, weight in members],
                [layer.u for layer in layers],
                [layer.v for layer in layers],
                [layer.dim for layer in layers],
                iterations,
            ).tolist()
            for (layer, weight), sigma in zip(members, sigmas):
                raw[layer.name] = sigma
                if not math.isfinite(sigma) or sigma == 0:
                    # A non-finite weight leaves NaN in u and v, and every later sigma would be NaN, also
                    # once the weight is finite again; a weight of zeros (a layer initialised at zero)
                    # leaves u = v = 0 in the same way, and every later sigma 0. Start its iteration
                    # afresh, warmed up at the next check.
                    layer.u, layer.v = _start_vectors(weight, layer.dim, self._generator)
                    self._warmed_up = False
                used = self._normalising_sigma(layer)
                if used is not None:
                    # As IEEE floats divide (Python's / raises at 0): a weight of zeros under spectral
                    # norm is 0 / 0, NaN, in the layer's own forward, and flagged non_finite here too.
                    normalised[layer.name] = float(torch.tensor(sigma, dtype=torch.float64) / used)
        return raw, normalised

    @staticmethod
    def _normalising_sigma(layer):
        """The sigma the layer's spectral norm divides the weight by, ``u . (W v)`` with its own u, v
        (what its next forward in eval mode uses), or None for a layer without one."""
        sn = layer.normalisation
        if sn is None:
            return None
        matrix = layer.weight.detach().movedim(sn.dim, 0).flatten(1)
        return float(torch.vdot(sn._u, torch.mv(matrix, sn._v)))

    def _check(self):
        if self._window_steps == 0 and not self._diversity:
            return
        scalars = {"step": self.step}
        n = len(_SLOTS)
        totals = self._totals.tolist() if self._totals is not None else [0.0] * (3 * n)
        sums, squares, finite_counts = totals[:n], totals[n : 2 * n], totals[2 * n :]
        variances, counts = {}, {}
        for name, index in _SLOT.items():
            count = self._counts[index]
            if count and self._skips_overflow and name in _SCALED_SLOTS:
                finite = round(finite_counts[index])
                scalars[f"overflowed/{name}"] = count - finite
                count = finite
                if not count:  # every value of the check overflowed: flagged non_finite
                    scalars[name] = math.nan
            if count:
                mean = sums[index] / count
                scalars[name] = mean
                counts[name] = count
                variances[name] = max(squares[index] / count - mean * mean, 0.0) if math.isfinite(mean) else 0.0
        if self._diversity:
            self._latest_diversity = float(self._diversity[-1])
        if self._latest_diversity is not None:  # the latest measurement, also in checks without one
            scalars["diversity"] = self._latest_diversity
        raw, normalised = self._sigmas() if self._layers else ({}, {})
        scalars.update({self._sigma_keys[name][0]: value for name, value in raw.items()})
        scalars.update({self._sigma_keys[name][1]: value for name, value in normalised.items()})
        record = dict(
            scalars,
            _steps=self._window_steps,
            _counts=counts,
            _variances=variances,
            _diversities=[float(d) for d in self._diversity],
        )
        self.history.append(record)
        self._trim_history()
        self._diversity = []
        self._reset_window()
        if self.writer is not None:
            for name, value in scalars.items():
                if name != "step":
                    self.writer.add_scalar(f"stability/{name}", value, self.step)
        self._current = self._detect()
        for issue in self._current:
            if issue.name not in self.first_seen:
                self.first_seen[issue.name] = issue.step
                python_warnings.warn(f"gan_kernels.StabilityMonitor: {issue}", StabilityWarning, stacklevel=3)

    def _trim_history(self):
        if self.max_history is None:
            return
        t = self.thresholds  # read here, so that a later change of them applies
        keep = max(self.max_history, t.patience + 1, t.oscillation_windows)
        if len(self.history) > keep:
            del self.history[:-keep]

    def _recent(self, key, count):
        """The last ``count`` values of ``key`` over the checks (oldest first), or None if fewer;
        scanned from the end, so a check costs the same late in a long run."""
        values = []
        for record in reversed(self.history):
            if key in record:
                values.append(record[key])
                if len(values) == count:
                    return values[::-1]
        return None

    def _detect(self):
        t, latest = self.thresholds, self.history[-1]
        step = latest["step"]
        found = []

        def flag(name, **evidence):
            found.append(StabilityIssue(name, step, evidence, REMEDIES[name]))

        non_finite = [k for k, v in latest.items() if isinstance(v, float) and not math.isfinite(v)]
        # The scalars hold the check's latest diversity only; an earlier sample batch of the same check
        # may have been the one with a NaN.
        if "diversity" not in non_finite and not all(math.isfinite(d) for d in latest["_diversities"]):
            non_finite.append("diversity")
        if non_finite:
            flag("non_finite", signals=", ".join(non_finite))

        accuracies = self._recent("d_accuracy", t.patience)
        if accuracies and min(accuracies) >= t.overpowering_accuracy:
            flag(
                "discriminator_overpowering",
                d_accuracy=accuracies[-1],
                threshold=t.overpowering_accuracy,
                real_logit_mean=latest.get("real_logit_mean"),
                fake_logit_mean=latest.get("fake_logit_mean"),
            )

        norms = self._recent("grad_norm/G", t.patience + 1)
        if norms and math.isfinite(norms[0]):
            # The largest norm before the latest `patience` checks, kept as a running maximum of the
            # finite ones: one Inf (an overflowing step, which GradScaler skips) would otherwise make
            # every later norm "below 1% of the largest" for the rest of the run.
            self._largest_g_norm = max(self._largest_g_norm, norms[0])
        winning = accuracies is not None and min(accuracies) >= t.vanishing_accuracy
        if winning and norms:
            largest = self._largest_g_norm
            if all(norm < t.vanishing_gradient_ratio * largest for norm in norms[1:]):
                flag(
                    "vanishing_generator_gradient",
                    grad_norm_G=norms[-1],
                    largest=largest,
                    ratio=t.vanishing_gradient_ratio,
                )

        oscillation = self._oscillation()
        if oscillation:
            flag("oscillation", **oscillation)

        self._diversities = (self._diversities + latest["_diversities"])[-t.patience :]
        # Every one a number below the threshold: a NaN is no evidence of collapse (it is flagged
        # non_finite above, from the same latest["_diversities"]). max() was no test of that: over a NaN
        # its result depends on where the NaN sits, max([nan, 0.0]) being nan and max([0.0, nan]) 0.0.
        if len(self._diversities) == t.patience and all(d < t.collapse_diversity for d in self._diversities):
            flag("mode_collapse", diversity=self._diversities[-1], threshold=t.collapse_diversity)

        for key in (k for k in latest if k.startswith("sigma")):
            if key.startswith("sigma/") and f"sigma_normalized/{key[6:]}" in latest:
                continue  # a spectrally normalised layer: its normalised sigma is the one that matters
            first = self._first_sigmas.setdefault(key, [])
            if len(first) < t.sigma_baseline_checks:
                # Finite ones only (a NaN or Inf is flagged non_finite above): a non-finite baseline would
                # make every later comparison False, and exploding_sigma could never fire again. Positive
                # ones only: a 0 (a weight initialised at zero) says nothing about relative growth, and as
                # the baseline it made any growth at all exploding.
                if math.isfinite(latest[key]) and latest[key] > 0:
                    first.append(latest[key])
                continue
            baseline = max(first)
            recent = self._recent(key, t.patience + 1)
            if recent and all(b > a for a, b in zip(recent, recent[1:])) and recent[-1] > t.sigma_growth * baseline:
                flag("exploding_sigma", layer=key, sigma=recent[-1], first=baseline, growth=t.sigma_growth)
        return found

    def _oscillation(self):
        t = self.thresholds
        # From the latest check that observed either: a check of a sample batch alone (warnings read
        # after observe_samples) has neither, and judged the D loss instead, or nothing.
        key = next((k for r in reversed(self.history) for k in ("logit_gap", "d_loss") if k in r), None)
        if key is None:
            return None
        records = []
        for record in reversed(self.history):
            if key in record:
                records.append(record)
                if len(records) == t.oscillation_windows:
                    break
        if len(records) < t.oscillation_windows:
            return None
        records.reverse()
        means = [r[key] for r in records]
        if not all(math.isfinite(m) for m in means):
            return None
        # About their least-squares line: a drift or a trend of the gap (normal in a healthy run) is
        # no cycle, and about their mean it crossed it and varied like one.
        deviations = _detrended(means)
        crossings = sum(1 for a, b in zip(deviations, deviations[1:]) if a * b < 0)
        between = sum(d * d for d in deviations) / (len(deviations) - 2)  # the line took 2 of the values
        # The variance a check mean has from step-to-step noise alone: the unbiased within-check
        # variance over the n observations of the signal in that check, / n, which is the population
        # variance / (n - 1). A check with one observation (every=1) has no within-check variance: a
        # 0 there made any noise an "infinite contrast", so such checks are not used, and with none
        # left the oscillation is not judged.
        noises = [r["_variances"][key] / (r["_counts"][key] - 1) for r in records if r["_counts"][key] >= 2]
        if not noises:
            return None
        noise = sum(noises) / len(noises)
        contrast = between / noise if noise > 0 else (math.inf if between > 0 else 0.0)
        half = len(deviations) // 2
        early = math.sqrt(sum(d * d for d in deviations[:half]) / half)
        late = math.sqrt(sum(d * d for d in deviations[half:]) / (len(deviations) - half))
        settling = late < t.oscillation_decay * early
        if crossings < t.oscillation_crossings or contrast < t.oscillation_contrast or settling:
            return None
        periodicity, cycles = _periodicity(deviations)
        if periodicity < t.oscillation_periodicity:
            return None
        return {
            "signal": key,
            "crossings": crossings,
            "contrast": contrast,
            "periodicity": periodicity,
            "period": len(deviations) / cycles,  # in checks
            "amplitude": late,
            "earlier_amplitude": early,
        }

    # --- checkpoints ------------------------------------------------------------------------------

    def _settings(self):
        """The arguments a state is only valid with: its checks were counted and judged with them."""
        thresholds = {f"thresholds.{name}": value for name, value in dataclasses.asdict(self.thresholds).items()}
        return {"every": self.every, "sigma_iterations": self.sigma_iterations, "samples": self.samples, **thresholds}

    def state_dict(self):
        """What the monitor has kept from the run so far, for a checkpoint: plain Python values and
        tensors that ``torch.save`` stores (and ``torch.load(weights_only=True)`` reads), copies that
        share nothing with the monitor or the networks. With :meth:`load_state_dict`, a run restarted
        from the checkpoint checks and warns as the uninterrupted run would."""
        return {
            "settings": self._settings(),
            "step": self.step,
            "history": copy.deepcopy(self.history),
            "first_seen": dict(self.first_seen),
            "current": [dataclasses.asdict(issue) for issue in self._current],
            "largest_g_norm": self._largest_g_norm,
            "diversities": list(self._diversities),
            "first_sigmas": {key: list(values) for key, values in self._first_sigmas.items()},
            "latest_diversity": self._latest_diversity,
            "warmed_up": self._warmed_up,
            # It picks the subsamples and restarts u, v: restored, the resumed run draws what the
            # uninterrupted one would.
            "generator": self._generator.get_state(),
            "layers": {layer.name: {"u": layer.u.clone(), "v": layer.v.clone()} for layer in self._layers},
            # The steps observed since the latest check, which the next check includes.
            "window": {
                "totals": None if self._totals is None else self._totals.clone(),
                "counts": list(self._counts),
                "steps": self._window_steps,
                "diversity": [diversity.clone() for diversity in self._diversity],
                "gradient_norms": {name: norm.clone() for name, norm in self._gradient_norms.items()},
            },
        }

    def load_state_dict(self, state):
        """Restores a :meth:`state_dict` into this monitor, which must track the same layers (by name,
        with the same shapes) with the same ``every``, ``sigma_iterations``, ``samples`` and
        thresholds (a threshold absent from the state, saved before the field was added, as its
        default); a difference is a ``ValueError`` naming it, and leaves the monitor as it was. u, v
        go to their layers' current device and dtype. ``seed`` and ``writer`` stay the monitor's own."""
        expected = self.state_dict()
        if not isinstance(state, dict) or state.keys() != expected.keys():
            got = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise ValueError(
                f"state is not a StabilityMonitor.state_dict(): expected keys {sorted(expected)}, got {got}"
            )
        saved, mine = state["settings"], expected["settings"]
        for entry in ("settings", "layers", "window"):
            if not isinstance(state[entry], dict):
                got = type(state[entry]).__name__
                raise ValueError(f"StabilityMonitor.load_state_dict: the state's {entry} must be a dict, got {got}")
        # A state saved before a Thresholds field was added holds no value for it: the field's default
        # stands for the run that saved it, which had none to set.
        defaulted = {
            f"thresholds.{field.name}": field.default
            for field in dataclasses.fields(Thresholds)
            if f"thresholds.{field.name}" not in saved
        }
        theirs = {**saved, **defaulted}
        mismatches = [
            f"{name}: {theirs.get(name, 'absent')!r}{' (absent: the default)' if name in defaulted else ''} "
            f"in the state, {mine.get(name, 'absent')!r} in this monitor"
            for name in dict.fromkeys([*mine, *theirs])
            if theirs.get(name, "absent") != mine.get(name, "absent")
        ]
        if mismatches:
            raise ValueError("StabilityMonitor.load_state_dict: settings differ: " + "; ".join(mismatches))
        missing = [name for name in expected["layers"] if name not in state["layers"]]
        unexpected = [name for name in state["layers"] if name not in expected["layers"]]
        if missing or unexpected:
            raise ValueError(
                "StabilityMonitor.load_state_dict: tracked layers differ: missing from the state "
                f"{missing or 'none'}, unexpected in the state {unexpected or 'none'}"
            )
        for name, ours in expected["layers"].items():
            entry = state["layers"][name]
            if not isinstance(entry, dict) or entry.keys() != ours.keys():
                got = sorted(entry) if isinstance(entry, dict) else type(entry).__name__
                raise ValueError(f"StabilityMonitor.load_state_dict: layer {name}: expected keys ['u', 'v'], got {got}")
            for vector in ("u", "v"):
                if state["layers"][name][vector].shape != ours[vector].shape:
                    raise ValueError(
                        f"StabilityMonitor.load_state_dict: layer {name}: {vector} has shape "
                        f"{list(state['layers'][name][vector].shape)} in the state, "
                        f"{list(ours[vector].shape)} in this monitor"
                    )
        try:
            self._restore(state)
        except Exception as error:
            # A malformed entry found halfway (a checkpoint edited or from another version): back to
            # the state this monitor had, rather than half of each.
            self._restore(expected)
            raise ValueError(
                f"StabilityMonitor.load_state_dict: the state is malformed ({type(error).__name__}: {error}); "
                "the monitor is left as it was"
            ) from error

    def _restore(self, state):
        self.step = state["step"]
        self.history = copy.deepcopy(state["history"])
        self._trim_history()  # a state saved with a longer history (or none: max_history=None)
        self.first_seen = dict(state["first_seen"])
        self._current = [StabilityIssue(**issue) for issue in state["current"]]
        self._largest_g_norm = state["largest_g_norm"]
        self._diversities = list(state["diversities"])
        self._first_sigmas = {key: list(values) for key, values in state["first_sigmas"].items()}
        self._latest_diversity = state["latest_diversity"]
        self._warmed_up = state["warmed_up"]
        self._generator.set_state(state["generator"].cpu())  # torch.load(map_location="cuda") moves it too
        for layer in self._layers:
            weight = layer.current()
            saved = state["layers"][layer.name]
            layer.u = saved["u"].to(weight.device, weight.dtype, copy=True)
            layer.v = saved["v"].to(weight.device, weight.dtype, copy=True)
        window = state["window"]
        # Where this monitor accumulates (the state pins no device); the next observed values move them on.
        totals = window["totals"]
        if totals is not None and totals.numel() == 2 * len(_SLOTS):
            # Saved before the counts of finite values were kept: every value counted.
            totals = torch.cat([totals, torch.tensor(window["counts"], dtype=totals.dtype, device=totals.device)])
        self._totals = None if totals is None else totals.to(self._device, copy=True)
        self._counts = list(window["counts"])
        self._window_steps = window["steps"]
        self._diversity = [diversity.clone() for diversity in window["diversity"]]
        self._gradient_norms = {name: norm.clone() for name, norm in window["gradient_norms"].items()}

    # --- results ----------------------------------------------------------------------------------

    def _flush(self):
        # observe_gradients between two observe calls counts towards the next step's check.
        if self._window_steps or self._diversity:
            self._check()

    def report(self):
        """The latest check's scalars (logit means, gap, D accuracy, losses, penalty, gradient norms,
        sigmas, diversity), running a check first if steps are pending."""
        self._flush()
        if not self.history:
            return {}
        return {k: v for k, v in self.history[-1].items() if not k.startswith("_")}

    @property
    def warnings(self):
        """The conditions detected at the latest check (a list of StabilityIssue), running a check
        first if steps are pending."""
        self._flush()
        return list(self._current)

    def plot(self, path):
        """Draws a dashboard PNG of the checks in ``history``: losses, logit gap and D accuracy, gradient
        norms, spectral norms and diversity, with the first detection of each condition marked."""
        # A Figure of its own, not pyplot's: matplotlib.use("Agg") switched the user's backend (a
        # notebook's too) for the rest of the process.
        from matplotlib.figure import Figure

        self._flush()
        steps = [r["step"] for r in self.history]

        def series(key):
            return [r.get(key, math.nan) for r in self.history]

        fig = Figure(figsize=(22, 3.8))
        axes = fig.subplots(1, 5)
        panels = [
            ("losses", ["d_loss", "g_loss", "penalty"], False),
            ("logit gap and D accuracy", ["logit_gap", "d_accuracy"], False),
            ("gradient norms", ["grad_norm/D", "grad_norm/G"], True),
            (
                "spectral norms (raw weights)",
                sorted({k for r in self.history for k in r if k.startswith("sigma/")}),
                True,
            ),
            ("diversity (generated / real)", ["diversity"], False),
        ]
        for ax, (title, keys, log) in zip(axes, panels):
            for key in keys:
                values = series(key)
                if any(math.isfinite(v) for v in values):
                    ax.plot(steps, values, label=key.replace("sigma/", ""), linewidth=1)
            if log and ax.lines:
                ax.set_yscale("log")
            has_curves = bool(ax.lines)
            for name, step in self.first_seen.items():
                ax.axvline(step, color="red", linewidth=0.8, linestyle="--")
                ax.text(
                    step,
                    0.98,
                    name,
                    rotation=90,
                    va="top",
                    ha="right",
                    fontsize=6,
                    color="red",
                    transform=ax.get_xaxis_transform(),
                )
            ax.set_title(title, fontsize=9)
            ax.set_xlabel("step")
            if has_curves:
                ax.legend(fontsize=6)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        return path
