"""A small StyleGAN-flavoured GAN on scikit-learn's bundled 8x8 digits (no download), on the CPU.

    python examples/digits.py                   # ~3 min on 2 CPU cores
    python examples/digits.py --steps 300       # a quick look

G: a mapping net (PixelNorm + EqualizedLinear, lr multiplier 0.01) and a synthesis net of
EqualizedConv2d with pixel norm, as in ProGAN. D: EqualizedConv2d and EqualizedLinear with a
MinibatchStd epilogue, trained with the non-saturating loss and lazy R1 (StyleGAN2's separate
regularisation step and its Adam correction), watched by gan_kernels' StabilityMonitor. Reports
class coverage measured by a classifier trained on the real digits (classes produced, entropy of
the class histogram, mean confidence) and what the monitor flagged; saves a sample grid PNG and
the monitor's dashboard PNG. Needs scikit-learn (the data and the classifier) and tqdm; matplotlib for the pictures.
"""

import argparse
import math
import os
import sys
import time

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import gan_kernels  # noqa: E402
from gan_kernels import losses, penalties  # noqa: E402
from gan_kernels.monitor import StabilityMonitor  # noqa: E402
from gan_kernels.nn import EqualizedConv2d, EqualizedLinear, MinibatchStd, PixelNorm  # noqa: E402

Z_DIM = 64
W_DIM = 128


def load_digits():
    """Images in [-1, 1] as [N, 1, 8, 8] and their labels."""
    from sklearn.datasets import load_digits as sklearn_digits

    data = sklearn_digits()
    images = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 8.0 - 1.0
    return images, torch.tensor(data.target)


class Generator(nn.Module):
    def __init__(self):
        super().__init__()
        self.mapping = nn.Sequential(
            PixelNorm(),
            EqualizedLinear(Z_DIM, W_DIM, activation="lrelu", lr_multiplier=0.01),
            EqualizedLinear(W_DIM, W_DIM, activation="lrelu", lr_multiplier=0.01),
        )
        self.const = EqualizedLinear(W_DIM, 64 * 4 * 4, activation="lrelu")
        self.synthesis = nn.Sequential(
            PixelNorm(),
            EqualizedConv2d(64, 64, 3, activation="lrelu"),
            PixelNorm(),
            nn.Upsample(scale_factor=2),
            EqualizedConv2d(64, 32, 3, activation="lrelu"),
            PixelNorm(),
            EqualizedConv2d(32, 1, 1),
        )

    def forward(self, z):
        return self.synthesis(self.const(self.mapping(z)).view(-1, 64, 4, 4))


class Discriminator(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            EqualizedConv2d(1, 32, 1, activation="lrelu"),
            EqualizedConv2d(32, 64, 3, activation="lrelu"),
            nn.AvgPool2d(2),
            MinibatchStd(group_size=4, num_channels=1),
            EqualizedConv2d(65, 64, 3, activation="lrelu"),
        )
        self.head = nn.Sequential(EqualizedLinear(64 * 4 * 4, 128, activation="lrelu"), EqualizedLinear(128, 1))

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


def train_classifier(images, labels):
    from sklearn.linear_model import LogisticRegression

    classifier = LogisticRegression(max_iter=2000)
    classifier.fit(images.flatten(1).numpy(), labels.numpy())
    return classifier


def class_coverage(classifier, samples):
    """(classes produced, entropy of the class histogram in nats (max ln 10), mean confidence)."""
    probabilities = torch.tensor(classifier.predict_proba(samples.flatten(1).clamp(-1, 1).numpy()))
    confidence, predicted = probabilities.max(dim=1)
    histogram = torch.bincount(predicted, minlength=10).double() / len(predicted)
    produced = int((histogram >= 0.01).sum())
    entropy = float(-(histogram[histogram > 0] * histogram[histogram > 0].log()).sum())
    return produced, entropy, float(confidence.mean())


def train(steps, batch=64, r1_gamma=0.1, r1_interval=4, seed=0, log_every=100, monitor_every=50, samples_every=250):
    """(G, images, labels, seconds per step, the StabilityMonitor that watched the run)."""
    from tqdm import tqdm  # imported here, as sklearn is: the module's helpers do not need it

    torch.manual_seed(seed)
    images, labels = load_digits()
    g, d = Generator(), Discriminator()
    lazy = penalties.LazyRegularizer(r1_interval)
    opt_g = torch.optim.Adam(g.parameters(), lr=0.002, betas=(0.0, 0.99))
    lr_d, betas_d = penalties.lazy_adam_hyperparameters(0.002, (0.0, 0.99), r1_interval)
    opt_d = torch.optim.Adam(d.parameters(), lr=lr_d, betas=betas_d)
    monitor = StabilityMonitor(d, g, every=monitor_every)
    start = time.time()
    progress = tqdm(range(steps), unit="step", smoothing=0.05)
    for step in progress:
        real = images[torch.randint(len(images), (batch,))]
        with torch.no_grad():
            fake = g(torch.randn(batch, Z_DIM))
        fake_logits = d(fake)
        real_logits = d(real)
        loss_d = losses.discriminator_loss(real_logits, fake_logits, "non_saturating")
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        monitor.observe_gradients("D", d)
        opt_d.step()
        # Lazy R1 as StyleGAN2's Dreg phase: an optimiser step of its own, which is what the Adam
        # correction above accounts for (r1_interval + 1 steps per r1_interval minibatches).
        r1 = lazy(step, penalties.r1, d, real, r1_gamma)
        if r1 is not None:
            opt_d.zero_grad(set_to_none=True)
            r1.backward()
            opt_d.step()

        fake = g(torch.randn(batch, Z_DIM))
        loss_g = losses.generator_loss(d(fake), kind="non_saturating")
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        monitor.observe_gradients("G", g)
        opt_g.step()
        monitor.observe(real_logits=real_logits, fake_logits=fake_logits, d_loss=loss_d, g_loss=loss_g, penalty=r1)
        if step % samples_every == 0:
            monitor.observe_samples(fake, real)
        if log_every and (step + 1) % log_every == 0:
            progress.set_postfix(D=f"{loss_d.item():.3f}", G=f"{loss_g.item():.3f}")
    monitor.report()  # a last check over the steps since the latest one
    return g, images, labels, (time.time() - start) / max(steps, 1), monitor


def save_grid(samples, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no picture (pip install matplotlib)")
        return None
    rows = math.ceil(len(samples) / 10)
    fig, axes = plt.subplots(rows, 10, figsize=(10, rows))
    for ax, image in zip(axes.flat, samples):
        ax.imshow(image[0].clamp(-1, 1).numpy(), cmap="gray_r", vmin=-1, vmax=1)
    for ax in axes.flat:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--r1-gamma", type=float, default=0.1)
    parser.add_argument("--r1-interval", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    parser.add_argument(
        "--threads", type=int, default=1, help="CPU threads (default 1: these models are too small to gain from more)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    print(f"backend: {gan_kernels.backend()}")
    g, images, labels, seconds_per_step, monitor = train(
        args.steps, args.batch, args.r1_gamma, args.r1_interval, args.seed
    )
    classifier = train_classifier(images, labels)
    with torch.no_grad():
        samples = g(torch.randn(1000, Z_DIM, generator=torch.Generator().manual_seed(args.seed)))
    produced, entropy, confidence = class_coverage(classifier, samples)
    real_produced, real_entropy, real_confidence = class_coverage(classifier, images)
    print(f"\n{'':<10} {'classes':>8} {'entropy':>8} {'confidence':>11}")
    print(f"{'generated':<10} {produced:>5}/10 {entropy:>8.3f} {confidence:>11.3f}")
    print(
        f"{'real':<10} {real_produced:>5}/10 {real_entropy:>8.3f} {real_confidence:>11.3f}"
        "   (max entropy ln 10 = 2.303)"
    )
    print(f"{1e3 * seconds_per_step:.1f} ms per step")
    flagged = ", ".join(f"{name} (first at step {step})" for name, step in monitor.first_seen.items())
    print(f"StabilityMonitor: {flagged or 'nothing flagged'}")
    path = save_grid(samples[:100], os.path.join(args.out, "digits_samples.png"))
    if path:
        print(f"saved {path}")
        print(f"saved {monitor.plot(os.path.join(args.out, 'digits_dashboard.png'))}")
    return {"classes": produced, "entropy": entropy, "confidence": confidence, "flagged": dict(monitor.first_seen)}


if __name__ == "__main__":
    main()
