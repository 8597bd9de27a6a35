"""The classic mode-collapse test: a GAN on 2-D Gaussian mixtures (a ring of 8 and a grid of 25),
with and without gan_kernels' stabilisers.

    python examples/mixture_of_gaussians.py                     # all configurations, ~3 min on 2 CPU cores
    python examples/mixture_of_gaussians.py --configs none,sn+r1 --seeds 1 --steps 500

For each configuration it reports, averaged over seeds, the modes covered (a mode counts when at
least a quarter of its fair share of samples lands within 3 std of it) and the share of
high-quality samples (within 3 std of any mode); it saves a PNG grid of samples and a PNG of the
loss and per-layer sigma curves (matplotlib needed for the pictures only).
"""
import argparse
import dataclasses
import math
import os
import sys
import time

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import gan_kernels  # noqa: E402
from gan_kernels import penalties  # noqa: E402

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
    loss: str  # "ns" (non-saturating) or "wgan"
    spectral_norm: bool = False
    penalty: str = ""  # "", "wgan-gp" or "r1"
    weight: float = 0.0


CONFIGS = {
    "none": Config("ns"),
    "sn": Config("ns", spectral_norm=True),
    "wgan-gp": Config("wgan", penalty="wgan-gp", weight=0.1),  # lambda 0.1, as WGAN-GP's own toy runs
    "r1": Config("ns", penalty="r1", weight=0.5),
    "sn+r1": Config("ns", spectral_norm=True, penalty="r1", weight=0.5),
}

Z_DIM = 16
WIDTH = 128


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


def make_discriminator(config):
    d = mlp([2, WIDTH, WIDTH, WIDTH, 1], lambda: nn.LeakyReLU(0.2))
    if config.spectral_norm:
        for layer in d:
            if isinstance(layer, nn.Linear):
                gan_kernels.nn.spectral_norm(layer)
        gan_kernels.nn.batch_spectral_norm(d)  # one batched power iteration for all layers per forward
    return d


def sigmas(d):
    """Each spectrally normalised layer's sigma from its latest forward (no extra work)."""
    return [float(sigma) for sigma in gan_kernels.nn.spectral_sigmas(d).values() if sigma is not None]


def discriminator_loss(config, d, real, fake):
    real_logits, fake_logits = d(real), d(fake)
    if config.loss == "wgan":
        loss = fake_logits.mean() - real_logits.mean()
    else:
        loss = nn.functional.softplus(fake_logits).mean() + nn.functional.softplus(-real_logits).mean()
    if config.penalty == "wgan-gp":
        loss = loss + penalties.wgan_gp(d, real, fake, weight=config.weight)
    elif config.penalty == "r1":
        loss = loss + penalties.r1(d, real, gamma=config.weight)
    return loss


def generator_loss(config, d, fake):
    logits = d(fake)
    return -logits.mean() if config.loss == "wgan" else nn.functional.softplus(-logits).mean()


def train(config, dataset, steps, seed, batch=256, progress=None):
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    centers, std = DATASETS[dataset]
    g = mlp([Z_DIM, WIDTH, WIDTH, WIDTH, 2], nn.ReLU)
    d = make_discriminator(config)
    betas = (0.5, 0.9)
    opt_g = torch.optim.Adam(g.parameters(), lr=1e-3, betas=betas)
    opt_d = torch.optim.Adam(d.parameters(), lr=1e-3, betas=betas)
    curves = {"d_loss": [], "g_loss": [], "sigma": []}
    for step in range(steps):
        real = sample_mixture(centers, std, batch, generator)
        with torch.no_grad():
            fake = g(torch.randn(batch, Z_DIM, generator=generator))
        d_loss = discriminator_loss(config, d, real, fake)
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()

        g_loss = generator_loss(config, d, g(torch.randn(batch, Z_DIM, generator=generator)))
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()

        curves["d_loss"].append(d_loss.item())
        curves["g_loss"].append(g_loss.item())
        curves["sigma"].append(sigmas(d))
        if progress:
            progress(step)
    with torch.no_grad():
        samples = g(torch.randn(2500, Z_DIM, generator=generator))
    return samples, curves


class ProgressBar:
    def __init__(self, total, width=30, stream=sys.stderr):
        self.total, self.width, self.stream, self.done, self.start = total, width, stream, 0, time.time()

    def __call__(self, _step=None):
        self.done += 1
        if self.done % 50 and self.done != self.total:
            return
        filled = self.width * self.done // self.total
        elapsed = time.time() - self.start
        eta = elapsed / self.done * (self.total - self.done)
        self.stream.write(f"\r[{'#' * filled}{'.' * (self.width - filled)}] {self.done}/{self.total} steps "
                          f"{elapsed:5.0f}s elapsed, {eta:4.0f}s left")
        if self.done == self.total:
            self.stream.write("\n")
        self.stream.flush()


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
    fig, axes = plt.subplots(len(datasets), len(configs), figsize=(2.6 * len(configs), 2.6 * len(datasets)),
                             squeeze=False)
    for i, ds in enumerate(datasets):
        centers, _ = DATASETS[ds]
        for j, name in enumerate(configs):
            r = results[name, ds]
            ax = axes[i][j]
            ax.scatter(r["samples"][:, 0], r["samples"][:, 1], s=1, alpha=0.4)
            ax.scatter(centers[:, 0], centers[:, 1], s=12, c="red", marker="x")
            ax.set_title(f"{name} / {ds}\n{r['modes']:.1f}/{len(centers)} modes, {100 * r['quality']:.0f}% HQ",
                         fontsize=8)
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
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads (default 1: these models are too small to gain from more)")
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

    progress = ProgressBar(len(configs) * len(datasets) * args.seeds * args.steps)
    results = {}
    for ds in datasets:
        centers, std = DATASETS[ds]
        for name in configs:
            modes, quality, seconds = [], [], []
            for seed in range(args.seeds):
                start = time.time()
                samples, curves = train(CONFIGS[name], ds, args.steps, seed, progress=progress)
                seconds.append(time.time() - start)
                m, q = mode_metrics(samples, centers, std)
                modes.append(m)
                quality.append(q)
            results[name, ds] = {"modes": sum(modes) / len(modes), "quality": sum(quality) / len(quality),
                                 "ms_per_step": 1e3 * sum(seconds) / len(seconds) / args.steps,
                                 "samples": samples, "curves": curves}

    print(f"\n{'config':<10} {'dataset':<8} {'modes covered':>14} {'high quality':>13} {'ms/step':>8}")
    for (name, ds), r in results.items():
        total = len(DATASETS[ds][0])
        print(f"{name:<10} {ds:<8} {r['modes']:>9.1f}/{total:<4} {100 * r['quality']:>12.1f}% {r['ms_per_step']:>8.2f}")
    print(f"(averaged over {args.seeds} seed(s), {args.steps} steps each, batch 256)")
    for path in save_pictures(results, args.out):
        print(f"saved {path}")
    return results


if __name__ == "__main__":
    main()
