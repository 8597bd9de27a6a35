"""The README's python examples run and do what the text around them says.

Convention: every ```python block of README.md comes right after a line `<!-- readme-test: NAME -->`
(an HTML comment, which GitHub renders as nothing). BLOCKS names, for each NAME, either the setup
that defines what the block leaves to the reader (their G, D, data and optimisers, tiny here) and a
check of what the README claims about it, or the reason the block cannot run in a test. A block
without a marker, or a marker without an entry, fails, so an example cannot be added unchecked.

Each block runs in a fresh namespace of its setup's names, compiled with README.md's line numbers
(a traceback points into the README), in a temporary working directory. No GPU, network or process
group is needed; under GAN_KERNELS_IMPL=reference the blocks run on the reference ops.
"""

import copy
import dataclasses
import os
import re

import gan_kernels
import pytest
import torch
from gan_kernels import penalties
from gan_kernels.nn import EqualizedConv2d, EqualizedLinear, MinibatchStd

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
MARKER = re.compile(r"<!-- readme-test: ([a-z0-9-]+) -->")


def readme_blocks():
    """[(name or None, first line number of the code, code)] for every ```python block."""
    lines = open(README, encoding="utf-8").read().split("\n")
    blocks = []
    for i, line in enumerate(lines):
        if line.strip() != "```python":
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
        marker = MARKER.fullmatch(lines[i - 1].strip()) if i else None
        blocks.append((marker and marker.group(1), i + 2, "\n".join(lines[i + 1 : end])))
    return blocks


# Setups: the reader's own model and data, as small as the blocks allow.


def small_gan():
    torch.manual_seed(0)
    n, z_dim = 8, 16
    G = torch.nn.Sequential(EqualizedLinear(z_dim, 3 * 8 * 8), torch.nn.Unflatten(1, (3, 8, 8)))
    D = torch.nn.Sequential(
        EqualizedConv2d(3, 8, 3, activation="lrelu"),
        MinibatchStd(4),
        torch.nn.Flatten(),
        EqualizedLinear(9 * 8 * 8, 1),
    )
    return dict(
        torch=torch,
        gan_kernels=gan_kernels,
        penalties=penalties,
        G=G,
        D=D,
        n=n,
        z_dim=z_dim,
        z=torch.randn(n, z_dim),
        real=torch.randn(n, 3, 8, 8),
        opt_d=torch.optim.Adam(D.parameters(), lr=0.0025, betas=(0.0, 0.99)),
        opt_g=torch.optim.Adam(G.parameters(), lr=0.0025, betas=(0.0, 0.99)),
        step=16,  # a step on which the lazy regulariser is due
        gamma=1.0,
        device="cpu",
        _D_before=copy.deepcopy(D),  # for checks of what the block computed before its optimiser step
    )


def sn_discriminator():
    torch.manual_seed(0)

    def build_discriminator(normalise):
        return torch.nn.Sequential(
            normalise(torch.nn.Conv2d(3, 8, 3, padding=1)),
            torch.nn.LeakyReLU(0.1),
            torch.nn.Flatten(),
            normalise(torch.nn.Linear(8 * 8 * 8, 1)),
        )

    return dict(
        torch=torch, build_discriminator=build_discriminator, real=torch.randn(4, 3, 8, 8), fake=torch.randn(4, 3, 8, 8)
    )


def flat_samples():
    torch.manual_seed(0)
    return dict(torch=torch, gan_kernels=gan_kernels, real=torch.randn(16, 784), fake=torch.randn(16, 784))


def style_generator():
    torch.manual_seed(0)
    mapping = torch.nn.Sequential(EqualizedLinear(8, 8, activation="lrelu"), torch.nn.Unflatten(1, (2, 4)))
    to_image = EqualizedLinear(4, 3 * 4 * 4)

    def synthesis(ws):
        return to_image(ws.mean(1)).unflatten(1, (3, 4, 4))

    return dict(
        torch=torch,
        penalties=penalties,
        mapping=mapping,
        synthesis=synthesis,
        z=torch.randn(4, 8),
        loss_g=torch.zeros(()),
        step=8,
        device="cpu",
    )


class SummaryWriter:
    """The README's writer: the monitor needs only add_scalar (no tensorboard here)."""

    def __init__(self, log_dir):
        self.scalars = []

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, value, step))


def trained_monitor():
    ns = small_gan()
    monitor = gan_kernels.StabilityMonitor(ns["D"], ns["G"], every=50, writer=SummaryWriter("runs/x"))
    for step in range(120):  # two checks, and steps observed since the latest
        monitor.observe(real_logits=torch.randn(8) + 1, fake_logits=torch.randn(8) - 1, d_loss=1.0, g_loss=0.7)
    return dict(
        ns, monitor=monitor, step=120, StabilityMonitor=gan_kernels.StabilityMonitor, SummaryWriter=SummaryWriter
    )


class PackableD(torch.nn.Module):
    """A D with the features() the feature-matching line reads. It averages a pack of k samples'
    channels ([N/k, k*C, H, W]) back to C, so one stand-in also serves the PacGAN line."""

    def __init__(self, channels):
        super().__init__()
        self.channels = channels
        self.body = torch.nn.Sequential(torch.nn.Flatten(), EqualizedLinear(channels * 16, 16, activation="lrelu"))
        self.head = EqualizedLinear(16, 1)

    def features(self, x):
        return self.body(x.unflatten(1, (-1, self.channels)).mean(1))

    def forward(self, x):
        return self.head(self.features(x))


def anti_collapse_gan():
    torch.manual_seed(0)
    n, z_dim, channels = 8, 4, 3
    G = torch.nn.Sequential(EqualizedLinear(z_dim, channels * 16), torch.nn.Unflatten(1, (channels, 4, 4)))
    D = PackableD(channels)
    z = torch.randn(n, z_dim)
    return dict(
        torch=torch,
        G=G,
        D=D,
        n=n,
        z_dim=z_dim,
        z=z,
        real=torch.randn(n, channels, 4, 4),
        fake=G(z),
        augment=lambda x: x.flip(-1),
        opt_d=torch.optim.Adam(D.parameters()),
        opt_g=torch.optim.Adam(G.parameters()),
        batch_size=n,
        step=100,
    )


# Checks: what the README says around each block.


def check_usage(ns, out):
    x = ns["x"]
    assert torch.allclose(ns["y"], x * torch.rsqrt(x.square().mean(1, keepdim=True) + 1e-8), rtol=1e-5, atol=1e-6)
    assert x.grad is not None and torch.isfinite(x.grad).all()  # the double backward reached x
    assert out.strip() == str(gan_kernels.backend())


def check_d_step(ns, out):
    assert torch.isfinite(ns["loss_d"])
    assert all(p.grad is not None for p in ns["D"].parameters())


def check_lazy_r1(ns, out):
    # "[N], sum(g_i^2)" of D's real logits with respect to the reals
    (g,) = torch.autograd.grad(ns["_D_before"](ns["x"]).sum(), ns["x"])
    torch.testing.assert_close(ns["r1"].detach(), g.square().flatten(1).sum(1))
    check_d_step(ns, out)


def check_batch_spectral_norm(ns, out):
    assert set(ns["spectral_sigmas"](ns["D"])) == {"0.weight", "3.weight"}
    assert "0.weight" in out and "3.weight" in out
    assert all(p.grad is not None for p in ns["D"].parameters())


def check_minibatch_discrimination(ns, out):
    assert ns["D"][:3](ns["real"]).shape == (16, 356)  # "[N, 256] -> [N, 356]"
    assert ns["real_logits"].shape == ns["fake_logits"].shape == (16, 1)
    assert ns["o"].shape == (64, 100)


def check_r3gan(ns, out):
    assert ns["r1"].shape == ns["r2"].shape == (8,)  # [N] each
    assert torch.isfinite(ns["loss_d"]) and torch.isfinite(ns["loss_g"])


def check_path_length(ns, out):
    assert ns["plr"].mean_length.item() > 0  # the running mean moved from 0
    ns["loss_g"].backward()
    assert all(p.grad is not None for p in ns["mapping"].parameters())


def check_monitor_checkpoint(ns, out):
    saved, loaded = ns["checkpoint"]["monitor"], ns["monitor"].state_dict()
    assert loaded["step"] == saved["step"] == 120
    assert loaded["history"] == saved["history"] and len(saved["history"]) == 2


def check_anti_collapse(ns, out):
    assert ns["samples"].shape == ns["real"].shape
    assert torch.isfinite(ns["loss_d"]) and torch.isfinite(ns["loss_g"])
    assert all(p.abs().max() <= 0.01 for p in ns["D"].parameters())  # clipped after the step


@dataclasses.dataclass
class Block:
    setup: object = None  # () -> dict of the names the block uses but does not define
    check: object = None  # (namespace after the block, its stdout) -> asserts
    skip: str = None  # why it cannot run here


NEEDS_PROCESS_GROUP = (
    "needs a torch.distributed process group (torchrun); tests/test_distributed.py runs these "
    "recipes' steps in gloo processes"
)
BLOCKS = {
    "usage": Block(dict, check_usage),
    "wgan-gp-step": Block(small_gan, check_d_step),
    "lazy-r1": Block(small_gan, check_lazy_r1),
    "batch-spectral-norm": Block(sn_discriminator, check_batch_spectral_norm),
    "minibatch-discrimination": Block(flat_samples, check_minibatch_discrimination),
    "ddp-recipe": Block(skip=NEEDS_PROCESS_GROUP),
    "all-reduce-loop": Block(skip=NEEDS_PROCESS_GROUP + "; its loop body is elided (...)"),
    "r3gan-step": Block(small_gan, check_r3gan),
    "path-length": Block(style_generator, check_path_length),
    "monitor-loop": Block(skip="a template: the D and G steps in its loop are the reader's (...)"),
    "monitor-checkpoint": Block(trained_monitor, check_monitor_checkpoint),
    "monitor-ddp-stop": Block(skip="a loop body (break, observe(...)) under a process group: " + NEEDS_PROCESS_GROUP),
    "anti-collapse": Block(anti_collapse_gan, check_anti_collapse),
}


def test_every_python_block_is_marked_and_known():
    names = [name for name, _, _ in readme_blocks()]
    unmarked = [line for name, line, _ in readme_blocks() if name is None]
    assert not unmarked, f"README.md python blocks at lines {unmarked} lack a '<!-- readme-test: NAME -->' line"
    assert len(names) == len(set(names)), f"a README marker name is used twice: {names}"
    assert set(names) == set(BLOCKS), (
        f"README markers without an entry in BLOCKS: {sorted(set(names) - set(BLOCKS))}; "
        f"BLOCKS entries without a README block: {sorted(set(BLOCKS) - set(names))}"
    )


@pytest.mark.parametrize("name", list(BLOCKS))
def test_readme_block(name, tmp_path, monkeypatch, capsys):
    block = BLOCKS[name]
    if block.skip:
        pytest.skip(block.skip)
    found = [(line, code) for n, line, code in readme_blocks() if n == name]
    assert len(found) == 1, f"README.md has {len(found)} python blocks marked '<!-- readme-test: {name} -->'"
    ((line, code),) = found
    monkeypatch.chdir(tmp_path)  # blocks that write files (checkpoint.pt) write them here
    namespace = block.setup()
    capsys.readouterr()
    exec(compile("\n" * (line - 1) + code, README, "exec"), namespace)
    block.check(namespace, capsys.readouterr().out)
