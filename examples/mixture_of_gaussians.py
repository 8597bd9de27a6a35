"""The classic mode-collapse test: a GAN on 2-D Gaussian mixtures (a ring of 8 and a grid of 25),
with and without gan_kernels' stabilisers.

    python examples/mixture_of_gaussians.py                     # all configurations (see the README for times)
    python examples/mixture_of_gaussians.py --configs none,r1 --datasets grid25 --steps 5000

For each configuration it reports, averaged over seeds, the modes covered (a mode counts when at
least a quarter of its fair share of samples lands within 3 std of it) and the share of
high-quality samples (within 3 std of any mode) and which failure signs gan_kernels'
StabilityMonitor flagged in each run, and at which step; it saves a PNG grid of samples and a PNG
of the loss and per-layer sigma curves (matplotlib needed for the pictures only, tqdm for the
progress bar).

Every configuration trains the same G and D (MLPs, 3 hidden layers of 64; G's noise is 2-D, as in
the WGAN-GP authors' toy script) with the same optimiser and budget: Adam with betas (0, 0.9), one
D step per G step and two time-scale learning rates (D 4e-3, G 2e-3; TTUR, Heusel et al. 2017, as
SAGAN/BigGAN use with spectral norm), decayed linearly to 0 over the last 40% of the steps. These
rates are 10-20x the papers' 1e-4..4e-4 because the runs are a few thousand steps, not 100k.
The networks see the data standardised to unit variance (as the WGAN-GP toy script does); the
samples are reported in the data's units. What differs per configuration is in CONFIGS:
  none     non-saturating loss, nothing else
  sn       spectral_norm on every D layer, hinge loss (SNGAN, BigGAN)
  wgan-gp  Wasserstein loss + gradient penalty with lambda 0.1: the WGAN-GP authors' value for 2-D
           toy data (their gan_toy.py; 10, their image setting, does not converge at this budget,
           1 is as good on the ring and worse on the grid); their 5 critic steps per G step are
           replaced by TTUR's single D step (5 would cost 5x the time here)
  r1       non-saturating loss + R1 (Mescheder et al. 2018) with gamma 0.1 (the best of 0.03, 0.1 and
           0.3 at this budget; gamma depends on the data's scale)
  sn+r1    r1 with spectral_norm on every D layer
  unrolled non-saturating loss, G's loss against D unrolled 5 SGD steps ahead (Metz et al. 2017,
           gan_kernels.stabilizers.unrolled_generator_loss; 5 as the authors' mixture-of-Gaussians
           code) with step size 0.003, the best of 0.003, 0.01, 0.03 and 0.1 on the ring. Along an
           unregularised ring run, unrolling with 0.003 would change G's gradient by 8-33% of its
           norm, with 0.01 by 24-77%; the larger steps cover fewer modes with this fast Adam-trained
           D (0.01: 4 modes in seed 0; 0.03 and 0.1: none, D overpowers G)
  instance-noise  non-saturating loss; every batch D sees (real and fake, in D's and G's loss) gets
           N(0, std_t^2) noise, std_t falling linearly from 0.3 (20x the modes' std in the
           standardised units D sees; the best of 0.1, 0.3 and 0.6 on the ring) to 0 by the step where
           the learning rates start to decay (Sonderby et al. 2017, gan_kernels.stabilizers.InstanceNoise)
  mbdisc   non-saturating loss, nothing else but minibatch discrimination (Salimans et al. 2016)
           before D's last layer: 32 kernels of 5 dims (the paper's kernel dim; half as many kernels
           as D's 64 features, about the paper's ratio), computed within the real and within the
           generated batch
"""

import argparse
import dataclasses
import functools
import math
import os
import sys
import time
import warnings

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import gan_kernels  # noqa: E402
from gan_kernels import losses, penalties, stabilizers  # noqa: E402
from gan_kernels.monitor import StabilityMonitor, StabilityWarning  # noqa: E402

# Ring of 8 at radius 2 (std 0.02) and a 5x5 grid on [-4, 4] (std 0.05), as in the VEEGAN/PacGAN tests.
DATASETS = {
    "ring8": (
        torch.tensor([[2 * math.cos(2 * math.pi * k / 8), 2 * math.sin(2 * math.pi * k / 8)] for k in range(8)]),
        0.02,
    ),
    "grid25": (torch.tensor([[x, y] for x in range(-4, 5, 2) for y in range(-4, 5, 2)], dtype=torch.float32), 0.05),
}


@dataclasses.dataclass(frozen=True)
class Config:
    loss: str  # a gan_kernels.losses kind: "non_saturating", "hinge" or "wasserstein"
    spectral_norm: bool = False
    penalty: str = ""  # "", "wgan-gp" or "r1"
    weight: float = 0.0  # WGAN-GP's lambda or R1's gamma
    unroll_steps: int = 0  # D steps G's loss looks ahead (unrolled GAN), each an SGD step of UNROLL_LR
    instance_noise: float = 0.0  # instance noise's initial std, in the standardised units D sees
    minibatch_discrimination: tuple = ()  # (num_kernels, kernel_dim) of a layer before D's last one
    # The optimiser; every configuration below keeps these shared defaults (see the docstring).
    lr: float = 2e-3  # G's Adam learning rate
    lr_d: float = 4e-3  # D's Adam learning rate
    betas: tuple = (0.0, 0.9)
    n_dis: int = 1  # D steps per G step


# The unrolled D's SGD step size and instance noise's initial std (in the standardised units D sees,
# where the modes' std is 0.014 on the ring and 0.018 on the grid); the module docstring says how
# they were chosen.
UNROLL_LR = 0.003
INSTANCE_NOISE_STD = 0.3

CONFIGS = {
    "none": Config("non_saturating"),
    "sn": Config("hinge", spectral_norm=True),
    "wgan-gp": Config("wasserstein", penalty="wgan-gp", weight=0.1),
    "r1": Config("non_saturating", penalty="r1", weight=0.1),
    "sn+r1": Config("non_saturating", spectral_norm=True, penalty="r1", weight=0.1),
    "unrolled": Config("non_saturating", unroll_steps=5),
    "instance-noise": Config("non_saturating", instance_noise=INSTANCE_NOISE_STD),
    "mbdisc": Config("non_saturating", minibatch_discrimination=(32, 5)),
}

Z_DIM = 2
WIDTH = 64
DEPTH = 3  # hidden layers of G and D
BATCH = 128
DECAY_FROM = 0.6  # the learning rates decay linearly to 0 from this fraction of the steps on
# Default steps per run: the ring is learned in fewer steps than the grid.
STEPS = {"ring8": 1000, "grid25": 2200}
MONITOR_EVERY = 50  # steps per StabilityMonitor check
SAMPLES_EVERY = 100  # steps between the monitor's diversity measurements


def sample_mixture(centers, std, n, generator):
    picks = torch.randint(len(centers), (n,), generator=generator)
    return centers[picks] + std * torch.randn(n, 2, generator=generator)


def mode_metrics(samples, centers, std):
    """(modes covered, share of high-quality samples): a sample is high quality within 3 std of a
    mode; a mode is covered when at least a quarter of its fair share of samples is near it."""
    distance = torch.cdist(samples, centers)  # [n, modes]
    nearest, mode = distance.min(dim=1)
    good = nearest <= 3 * std
    counts = torch.bincount(mode[good], minlength=len(centers))
    fair_share = len(samples) / len(centers)
    return int((counts >= fair_share / 4).sum()), float(good.float().mean())


def mlp(sizes, activation):
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


class PerBatch(nn.Module):
    """``layer`` applied to each ``batch`` rows on their own: D sees [real, fake(, ...)] in one
    forward, and minibatch features must compare real samples with real ones, generated with generated."""

    def __init__(self, layer, batch):
        super().__init__()
        self.layer, self.batch = layer, batch

    def forward(self, x):
        return torch.cat([self.layer(part) for part in x.split(self.batch)])


def make_discriminator(config, batch=BATCH):
    d = mlp([2] + [WIDTH] * DEPTH + [1], lambda: nn.LeakyReLU(0.2))
    if config.minibatch_discrimination:
        kernels, kernel_dim = config.minibatch_discrimination
        layer = gan_kernels.nn.MinibatchDiscrimination(WIDTH, kernels, kernel_dim)
        d[-1] = nn.Sequential(PerBatch(layer, batch), nn.Linear(WIDTH + kernels, 1))
    if config.spectral_norm:
        for layer in d:
            if isinstance(layer, nn.Linear):
                gan_kernels.nn.spectral_norm(layer)
        gan_kernels.nn.batch_spectral_norm(d)  # one batched power iteration for all layers per forward
    return d


def sigmas(d):
    """Each spectrally normalised layer's sigma from its latest forward (no extra work)."""
    return [float(sigma) for sigma in gan_kernels.nn.spectral_sigmas(d).values() if sigma is not None]


def discriminator_loss(config, d, real, fake, generator, noise=None):
    """D's loss and what the monitor observes (logits, penalty) from ONE forward of D over
    [real, fake(, interpolates)]: one power iteration per D step for the spectrally normalised Ds,
    and the penalties reuse these logits. ``noise``: the InstanceNoise D's inputs get, if any."""
    if noise is not None:
        real, fake = noise(real), noise(fake)
    n = len(real)
    inputs = [real.requires_grad_(config.penalty == "r1"), fake]
    if config.penalty == "wgan-gp":
        inputs.append(penalties.interpolates(real, fake, generator).requires_grad_())
    logits = d(torch.cat(inputs))
    real_logits, fake_logits = logits[:n], logits[n : 2 * n]
    loss = losses.discriminator_loss(real_logits, fake_logits, config.loss)
    penalty = None
    if config.penalty == "wgan-gp":  # = penalties.wgan_gp(d, real, fake, weight), without a 2nd forward
        penalty = config.weight * penalties.gradient_penalty(logits[2 * n :], inputs[2], center=1.0).mean()
    elif config.penalty == "r1":  # = penalties.r1(d, real, gamma), without a 2nd forward
        penalty = config.weight / 2 * penalties.gradient_penalty(real_logits, real, center=0.0).mean()
    if penalty is not None:
        loss = loss + penalty
    return loss, {"real_logits": real_logits, "fake_logits": fake_logits, "penalty": penalty}


def generator_loss(config, d, fake, real, noise=None):
    """G's loss; ``real`` (the latest D step's real batch) is what the unrolled D steps train on."""
    if config.unroll_steps:
        return stabilizers.unrolled_generator_loss(
            d,
            fake,
            real,
            functools.partial(losses.discriminator_loss, kind=config.loss),
            functools.partial(losses.generator_loss, kind=config.loss),
            config.unroll_steps,
            UNROLL_LR,
        )
    if noise is not None:
        fake = noise(fake)
    return losses.generator_loss(d(fake), kind=config.loss)


def train(config, dataset, steps, seed, batch=BATCH, progress=None, monitor_every=MONITOR_EVERY):
    """(samples in the data's units, curves, the StabilityMonitor that watched the run)."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    centers, std = DATASETS[dataset]
    # The networks work in standardised coordinates (unit variance per coordinate, as any input
    # normalisation); samples are returned in the data's own units.
    scale = float((centers.var(dim=0, unbiased=False).mean() + std**2).sqrt())
    g = mlp([Z_DIM] + [WIDTH] * DEPTH + [2], nn.ReLU)
    d = make_discriminator(config, batch)
    opt_g = torch.optim.Adam(g.parameters(), lr=config.lr, betas=config.betas, fused=True)
    opt_d = torch.optim.Adam(d.parameters(), lr=config.lr_d, betas=config.betas, fused=True)
    curves = {"d_loss": [], "g_loss": [], "sigma": []}
    monitor = StabilityMonitor(d, g, every=monitor_every)
    decay_from = int(DECAY_FROM * steps)
    noise = None
    if config.instance_noise:
        noise = stabilizers.InstanceNoise(config.instance_noise, max(decay_from, 1), generator=generator)
    for step in range(steps):
        if step >= decay_from:
            for opt, lr in ((opt_g, config.lr), (opt_d, config.lr_d)):
                opt.param_groups[0]["lr"] = lr * (steps - step) / (steps - decay_from)
        for _ in range(config.n_dis):
            real = sample_mixture(centers, std, batch, generator) / scale
            with torch.no_grad():
                fake = g(torch.randn(batch, Z_DIM, generator=generator))
            d_loss, observed = discriminator_loss(config, d, real, fake, generator, noise)
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            monitor.observe_gradients("D", d)
            opt_d.step()

        # The generator step needs no gradients for D's weights, and (eval mode) no power
        # iteration: a spectrally normalised D uses the u, v of its latest D step.
        d.eval().requires_grad_(False)
        fake = g(torch.randn(batch, Z_DIM, generator=generator))
        g_loss = generator_loss(config, d, fake, real.detach(), noise)
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        monitor.observe_gradients("G", g)
        opt_g.step()
        d.train().requires_grad_(True)
        if noise is not None:
            noise.step()
        monitor.observe(d_loss=d_loss, g_loss=g_loss, **observed)
        if step % SAMPLES_EVERY == 0:
            monitor.observe_samples(fake, real)

        curves["d_loss"].append(d_loss.item())
        curves["g_loss"].append(g_loss.item())
        curves["sigma"].append(sigmas(d))
        if progress is not None:
            progress.update()
    monitor.report()  # a last check over the steps since the latest one
    with torch.no_grad():
        samples = g(torch.randn(2500, Z_DIM, generator=generator)) * scale
    return samples, curves, monitor


def flagged(monitor):
    """'condition@step, ...' for every condition the monitor detected, at its first detection."""
    return ", ".join(f"{name}@{step}" for name, step in monitor.first_seen.items()) or "-"


def save_pictures(results, out_dir):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no pictures (pip install matplotlib)")
        return []
    configs = sorted({c for c, _ in results}, key=list(CONFIGS).index)
    datasets = sorted({ds for _, ds in results}, key=list(DATASETS).index)
    fig, axes = plt.subplots(
        len(datasets), len(configs), figsize=(2.6 * len(configs), 2.6 * len(datasets)), squeeze=False
    )
    for i, ds in enumerate(datasets):
        centers, _ = DATASETS[ds]
        for j, name in enumerate(configs):
            r = results[name, ds]
            ax = axes[i][j]
            ax.scatter(r["samples"][:, 0], r["samples"][:, 1], s=1, alpha=0.4)
            ax.scatter(centers[:, 0], centers[:, 1], s=12, c="red", marker="x")
            ax.set_title(
                f"{name} / {ds}\n{r['modes']:.1f}/{len(centers)} modes, {100 * r['quality']:.0f}% HQ", fontsize=8
            )
            lim = 3 if ds == "ring8" else 5.5
            ax.set_xlim(-lim, lim)
            ax.set_ylim(-lim, lim)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    samples_png = os.path.join(out_dir, "mog_samples.png")
    fig.savefig(samples_png, dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(len(datasets), 2, figsize=(11, 3.2 * len(datasets)), squeeze=False)
    for i, ds in enumerate(datasets):
        for name in configs:
            curves = results[name, ds]["curves"]
            window = max(1, len(curves["d_loss"]) // 50)
            smooth = torch.tensor(curves["d_loss"]).unfold(0, window, window).mean(1)
            axes[i][0].plot(range(0, window * len(smooth), window), smooth, label=name)
            sig = torch.tensor(curves["sigma"])
            for layer in range(sig.shape[1] if sig.dim() == 2 else 0):
                axes[i][1].plot(sig[:, layer], label=f"{name} layer {layer}", linewidth=0.8)
        axes[i][0].set_title(f"{ds}: discriminator loss (smoothed)")
        axes[i][0].set_xlabel("step")
        axes[i][0].legend(fontsize=7)
        axes[i][1].set_title(f"{ds}: per-layer sigma of the spectrally normalised D")
        axes[i][1].set_xlabel("step")
        if axes[i][1].lines:
            axes[i][1].legend(fontsize=6)
    fig.tight_layout()
    curves_png = os.path.join(out_dir, "mog_curves.png")
    fig.savefig(curves_png, dpi=110)
    plt.close(fig)
    return [samples_png, curves_png]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated, from {', '.join(CONFIGS)}")
    parser.add_argument("--datasets", default=",".join(DATASETS))
    default_steps = ", ".join(f"{ds} {n}" for ds, n in STEPS.items())
    parser.add_argument("--steps", type=int, default=None, help=f"training steps per run (default: {default_steps})")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    parser.add_argument(
        "--threads", type=int, default=1, help="CPU threads (default 1: these models are too small to gain from more)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    configs = args.configs.split(",")
    datasets = args.datasets.split(",")
    for name in configs:
        if name not in CONFIGS:
            parser.error(f"--configs: unknown configuration {name!r}; choose from {', '.join(CONFIGS)}")
    for name in datasets:
        if name not in DATASETS:
            parser.error(f"--datasets: unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
    os.makedirs(args.out, exist_ok=True)

    steps = {ds: args.steps or STEPS[ds] for ds in datasets}
    # One-time costs (the first double backward of a process takes seconds) out of the timings.
    for name in configs:
        train(CONFIGS[name], datasets[0], 2, 0)
    # Imported here: train() and the metrics (used by the tests) do not need tqdm.
    from tqdm import tqdm

    progress = tqdm(total=len(configs) * args.seeds * sum(steps.values()), unit="step", smoothing=0.05)
    results = {}
    # The monitor's findings are collected into the table, not printed as warnings mid-run.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StabilityWarning)
        for ds in datasets:
            centers, std = DATASETS[ds]
            for name in configs:
                modes, quality, seconds, flags = [], [], [], []
                for seed in range(args.seeds):
                    progress.set_description(f"{name} / {ds} / seed {seed}")
                    start = time.time()
                    samples, curves, monitor = train(CONFIGS[name], ds, steps[ds], seed, progress=progress)
                    seconds.append(time.time() - start)
                    m, q = mode_metrics(samples, centers, std)
                    modes.append(m)
                    quality.append(q)
                    flags.append(flagged(monitor))
                results[name, ds] = {
                    "modes": sum(modes) / len(modes),
                    "quality": sum(quality) / len(quality),
                    "modes_per_seed": modes,
                    "ms_per_step": 1e3 * sum(seconds) / len(seconds) / steps[ds],
                    "samples": samples,
                    "curves": curves,
                    "flagged": flags,
                }
    progress.close()

    print(
        f"\n{'config':<10} {'dataset':<8} {'modes covered':>14} {'per seed':>10} {'high quality':>13} {'ms/step':>8}"
        "  flagged by the StabilityMonitor (per seed: condition@first step)"
    )
    for (name, ds), r in results.items():
        total = len(DATASETS[ds][0])
        per_seed = ",".join(map(str, r["modes_per_seed"]))
        print(
            f"{name:<10} {ds:<8} {r['modes']:>9.1f}/{total:<4} {per_seed:>10} {100 * r['quality']:>12.1f}% "
            f"{r['ms_per_step']:>8.2f}  " + " | ".join(r["flagged"])
        )
    print(
        f"(averaged over {args.seeds} seed(s); steps per run: "
        + ", ".join(f"{ds} {n}" for ds, n in steps.items())
        + f"; batch {BATCH})"
    )
    for path in save_pictures(results, args.out):
        print(f"saved {path}")
    return results


if __name__ == "__main__":
    main()
