"""End to end (issue 5): small discriminators built from our layers, trained with our penalty helpers,
against the same discriminators built from plain-PyTorch layers with the textbook penalty written
out by hand. Float64: the penalty value, the loss and every parameter gradient must agree to
helpers.TOLERANCES.

* A StyleGAN2-like D (EqualizedConv2d with lrelu, a residual block with gain and conv_clamp,
  PixelNorm, the MinibatchStd epilogue, EqualizedLinear head): ours (gan_kernels.nn) vs the same
  layers on the reference formulas (helpers.ReferenceEqualized*) with the same weights, for every penalty helper, and a
  StyleGAN2 training loop with lazy R1 reusing the real logits.
* An SNGAN-like D (nn.Conv2d / nn.Linear): gan_kernels.nn.spectral_norm (+ batch_spectral_norm)
  with penalties.wgan_gp vs torch.nn.utils.parametrizations.spectral_norm with the textbook
  WGAN-GP, over a few optimiser steps (u, v move each forward).
* Checkpoint and resume: a GAN run using every stateful object of the package, saved midway, read
  back with weights_only=True into objects built afresh, continues bitwise as the uninterrupted run.
"""

import io
import math
import warnings

import pytest
import torch
from helpers import (
    DEVICES,
    OPS_REGISTERED,
    ReferenceEqualizedConv2d,
    ReferenceEqualizedLinear,
    assert_close,
    unregistered_autograd_is_an_error,
)
from torch.nn.utils.parametrizations import spectral_norm as torch_spectral_norm

import gan_kernels
from gan_kernels import _backend, penalties, reference, stabilizers
from gan_kernels.monitor import StabilityMonitor, StabilityWarning
from gan_kernels.nn import batch_spectral_norm, spectral_norm

DTYPE = torch.float64
SHAPE = (8, 3, 8, 8)  # N divisible by the MinibatchStd group size 4: two groups (strided grouping)


# --- the StyleGAN2-like discriminator, from either set of layers -------------------------------


class ReferencePixelNorm(torch.nn.Module):
    def forward(self, x):
        return reference.pixel_norm(x)


class ReferenceMinibatchStd(torch.nn.Module):
    def __init__(self, group_size=4, num_channels=1):
        super().__init__()
        self.group_size, self.num_channels = group_size, num_channels

    def forward(self, x):
        return reference.minibatch_std(x, self.group_size, self.num_channels)


OUR_LAYERS = dict(
    conv=gan_kernels.nn.EqualizedConv2d,
    linear=gan_kernels.nn.EqualizedLinear,
    pixel_norm=gan_kernels.nn.PixelNorm,
    mbstd=gan_kernels.nn.MinibatchStd,
)
REFERENCE_LAYERS = dict(
    conv=ReferenceEqualizedConv2d,
    linear=ReferenceEqualizedLinear,
    pixel_norm=ReferencePixelNorm,
    mbstd=ReferenceMinibatchStd,
)


class StyleGAN2LikeD(torch.nn.Module):
    """StyleGAN2's D in miniature: fromRGB, one residual block (skip 1x1 without bias, two 3x3 convs,
    both branches at gain sqrt(0.5), stride-2 downsampling, conv_clamp on the last conv), PixelNorm,
    then the epilogue: MinibatchStd(4, 1), 3x3 conv, fc (lr_multiplier 0.5), linear out."""

    def __init__(self, layers, conv_clamp=0.6):
        super().__init__()
        conv, linear = layers["conv"], layers["linear"]
        self.from_rgb = conv(3, 8, 1, activation="lrelu")
        self.skip = conv(8, 16, 1, bias=False, stride=2, padding=0)
        self.conv0 = conv(8, 8, 3, activation="lrelu")
        self.conv1 = conv(8, 16, 3, activation="lrelu", stride=2, conv_clamp=conv_clamp)
        self.norm = layers["pixel_norm"]()
        self.mbstd = layers["mbstd"](group_size=4, num_channels=1)
        self.conv = conv(17, 16, 3, activation="lrelu")
        self.fc = linear(16 * 4 * 4, 16, activation="lrelu", lr_multiplier=0.5)
        self.out = linear(16, 1)

    def forward(self, x):
        x = self.from_rgb(x)
        y = self.skip(x, gain=math.sqrt(0.5))
        x = self.conv1(self.conv0(x), gain=math.sqrt(0.5))
        x = self.norm(x + y)
        x = self.conv(self.mbstd(x))
        return self.out(self.fc(x.flatten(1)))


def stylegan2_pair(device="cpu"):
    """Our D and the plain-PyTorch D with the same weights; random biases (the layers init them to 0)."""
    torch.manual_seed(0)
    ours = StyleGAN2LikeD(OUR_LAYERS).to(device, DTYPE)
    with torch.no_grad():
        for name, p in ours.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.5)
    theirs = StyleGAN2LikeD(REFERENCE_LAYERS).to(device, DTYPE)
    theirs.load_state_dict(ours.state_dict())
    assert list(ours.state_dict()) == list(theirs.state_dict())
    return ours, theirs


def samples(seed, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(SHAPE, dtype=DTYPE, generator=gen).to(device) for _ in range(2))


# --- the textbook penalties, written out ------------------------------------------------------


def textbook_per_sample(D, x, center):
    x = x.detach().requires_grad_()
    (g,) = torch.autograd.grad(D(x).sum(), x, create_graph=True)
    g = g.flatten(1)
    return (g.norm(dim=1) - center).square() if center else g.square().sum(1)


def uniform_per_sample(x, generator):
    return torch.rand((x.shape[0], 1, 1, 1), dtype=x.dtype, device=x.device, generator=generator)


def textbook(helper, D, real, fake, seed):
    """Each helper by hand, drawing its randomness in the documented order from the same seed."""
    gen = torch.Generator(real.device).manual_seed(seed)
    if helper == "wgan_gp":
        eps = uniform_per_sample(real, gen)
        return 10.0 * textbook_per_sample(D, eps * real + (1 - eps) * fake, 1.0).mean()
    if helper == "r1":
        return 10.0 / 2 * textbook_per_sample(D, real, 0.0).mean()
    if helper == "r2":
        return 0.2 / 2 * textbook_per_sample(D, fake, 0.0).mean()
    if helper == "dragan":
        noise = torch.rand(real.shape, dtype=real.dtype, device=real.device, generator=gen)
        alpha = uniform_per_sample(real, gen)
        x = real + alpha * (0.5 * real.std(correction=0) * noise)
        return 10.0 * textbook_per_sample(D, x, 1.0).mean()
    if helper == "zero_centered_gp":
        eps = uniform_per_sample(real, gen)
        return 3.0 * textbook_per_sample(D, eps * real + (1 - eps) * fake, 0.0).mean()
    raise ValueError(helper)


def ours(helper, D, real, fake, seed):
    gen = torch.Generator(real.device).manual_seed(seed)
    if helper == "wgan_gp":
        return penalties.wgan_gp(D, real, fake, 10.0, generator=gen)
    if helper == "r1":
        return penalties.r1(D, real, 10.0)
    if helper == "r2":
        return penalties.r2(D, fake, 0.2)
    if helper == "dragan":
        return penalties.dragan(D, real, 10.0, generator=gen)
    if helper == "zero_centered_gp":
        return penalties.zero_centered_gp(D, real, fake, 3.0, generator=gen)
    raise ValueError(helper)


HELPERS = ["wgan_gp", "r1", "r2", "dragan", "zero_centered_gp"]


def loss_and_grads(loss, D):
    """The loss and d loss / d p for every parameter, by name."""
    names, params = zip(*D.named_parameters())
    grads = torch.autograd.grad(loss, params, allow_unused=True, materialize_grads=True)
    return loss.detach(), dict(zip(names, grads))


def assert_same_loss_and_grads(got, want, zero_grads=()):
    """``zero_grads``: biases followed only by piecewise-linear layers, which move no input gradient
    (only the activation pattern), so the penalty's gradient in them is exactly 0."""
    (loss, grads), (loss_ref, grads_ref) = got, want
    assert torch.isfinite(loss) and loss != 0
    assert_close(loss, loss_ref)
    assert list(grads) == list(grads_ref)
    for name, g_ref in grads_ref.items():
        if name in zero_grads:
            assert torch.count_nonzero(g_ref) == 0, name
        else:
            assert torch.count_nonzero(g_ref) > 0, name  # the parameter takes part in the penalty
        assert_close(grads[name], g_ref)


# --- StyleGAN2-like D --------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_stylegan2_like_d_forward_and_gradients_match_the_reference_layers(device):
    D, D_ref = stylegan2_pair(device)
    real, _ = samples(1, device)
    x, x_ref = real.clone().requires_grad_(), real.clone().requires_grad_()
    with unregistered_autograd_is_an_error():
        out = D(x)
        (gx,) = torch.autograd.grad(out.sum(), x)
    out_ref = D_ref(x_ref)
    (gx_ref,) = torch.autograd.grad(out_ref.sum(), x_ref)
    assert out.shape == (SHAPE[0], 1)
    assert_close(out, out_ref)
    assert_close(gx, gx_ref)
    # the conv_clamp of conv1 is active on part of the batch, so its gradient path is exercised
    h = D_ref.conv0(D_ref.from_rgb(real))
    h = D_ref.conv1(h, gain=math.sqrt(0.5)).abs()
    clamp = D_ref.conv1.conv_clamp * math.sqrt(0.5)
    assert (h == clamp).any() and (h < clamp).any()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("helper", HELPERS)
def test_stylegan2_like_d_penalty_and_parameter_gradients_match_textbook(helper, device):
    D, D_ref = stylegan2_pair(device)
    real, fake = samples(2, device)
    with unregistered_autograd_is_an_error():
        got = loss_and_grads(ours(helper, D, real, fake, seed=7), D)
    want = loss_and_grads(textbook(helper, D_ref, real, fake, seed=7), D_ref)
    # conv, fc and out are followed by lrelu / linear layers only
    assert_same_loss_and_grads(got, want, zero_grads={"conv.bias", "fc.bias", "out.bias"})


def test_stylegan2_like_d_penalty_is_sensitive_to_the_group_structure():
    """Guards the comparison itself: reordering the batch changes MinibatchStd's groups, hence the
    R1 value, so equal values above are not a coincidence of a permutation-invariant D."""
    D, _ = stylegan2_pair()
    real, _ = samples(3)
    swapped = real[[1, 0, 2, 3, 4, 5, 6, 7]]  # samples 0 and 1 are in different groups (0,2,4,6 / 1,3,5,7)
    with unregistered_autograd_is_an_error():
        a = penalties.r1(D, real, 10.0)
        b = penalties.r1(D, swapped, 10.0)
    assert not torch.allclose(a, b, rtol=1e-6, atol=0)


def stylegan2_d_main_loss(D, real, fake):
    """StyleGAN2's Dmain phase: non-saturating logistic on fakes and reals."""
    return torch.nn.functional.softplus(D(fake)).mean() + torch.nn.functional.softplus(-D(real)).mean()


def stylegan2_d_reg_loss(D, real, step, lazy, gamma, penalty):
    """StyleGAN2's Dreg phase, a step of its own every lazy.interval steps: R1 on the real logits,
    weighted by interval * gamma / 2 (lazy scales by the interval); None on other steps."""
    x = real.detach().requires_grad_(True)
    return lazy(step, lambda: (gamma / 2) * penalty(D(x), x).mean())


def textbook_r1_on_logits(logits, x):
    (g,) = torch.autograd.grad(logits.sum(), x, create_graph=True)
    return g.square().flatten(1).sum(1)


@pytest.mark.parametrize("device", DEVICES)
def test_stylegan2_training_loop_with_lazy_r1_matches_textbook(device):
    """Dmain every step and Dreg every second step, each with its own Adam step under the lazy
    correction of lr and betas (which is for exactly that schedule)."""
    D, D_ref = stylegan2_pair(device)
    lazy = penalties.LazyRegularizer(2)
    lr, betas = lazy.adam_hyperparameters(0.002, (0.0, 0.99))
    opt, opt_ref = (torch.optim.Adam(d.parameters(), lr=lr, betas=betas) for d in (D, D_ref))
    ours_r1 = lambda logits, x: gan_kernels.gradient_penalty(logits, x, center=0.0)  # noqa: E731
    phases_run = []
    for step in range(4):
        real, fake = samples(10 + step, device)
        phases = [
            (lambda d: stylegan2_d_main_loss(d, real, fake),) * 2,
            (
                lambda d: stylegan2_d_reg_loss(d, real, step, lazy, 10.0, ours_r1),
                lambda d: stylegan2_d_reg_loss(d, real, step, lazy, 10.0, textbook_r1_on_logits),
            ),
        ]
        for ours, textbook in phases:
            for o in (opt, opt_ref):
                o.zero_grad(set_to_none=True)
            with unregistered_autograd_is_an_error():
                loss = ours(D)
            loss_ref = textbook(D_ref)
            assert (loss is None) == (loss_ref is None)
            if loss is None:
                continue
            phases_run.append(step)
            loss.backward()
            loss_ref.backward()
            assert_close(loss.detach(), loss_ref.detach())
            for p, p_ref in zip(D.parameters(), D_ref.parameters()):
                assert (p.grad is None) == (p_ref.grad is None)  # R1 leaves the output layer's bias out
                if p.grad is not None:
                    assert_close(p.grad, p_ref.grad)
            opt.step()
            opt_ref.step()
            for p, p_ref in zip(D.parameters(), D_ref.parameters()):
                assert_close(p.detach(), p_ref.detach())
    assert phases_run == [0, 0, 1, 2, 2, 3]  # each step's Dmain, and Dreg on steps 0 and 2


@pytest.mark.skipif(not OPS_REGISTERED, reason="gan_kernels._C is not built")
@pytest.mark.skipif(_backend.IMPL == "reference", reason="GAN_KERNELS_IMPL=reference routes to the reference")
def test_stylegan2_like_d_runs_our_compiled_ops_through_the_double_backward():
    """The comparisons above compare our kernels, not the reference with itself."""
    D, _ = stylegan2_pair()
    real, _ = samples(4)
    with torch.autograd.profiler.profile() as prof:
        penalties.r1(D, real, 10.0).backward()
    names = {e.name for e in prof.function_events}
    expected = {
        "gan_kernels::bias_act",
        "gan_kernels::bias_act_grad",
        "gan_kernels::pixel_norm",
        "gan_kernels::pixel_norm_backward",
        "gan_kernels::minibatch_std",
        "gan_kernels::minibatch_std_backward",
        "gan_kernels::minibatch_std_double_backward",
        "gan_kernels::gradient_penalty",
        "gan_kernels::gradient_penalty_backward",
    }
    assert expected <= names, sorted(expected - names)


# --- SNGAN-like D with spectral norm and WGAN-GP ---------------------------------------------


class SNGANLikeD(torch.nn.Module):
    """SNGAN's ResNet D in miniature: an optimised first block (two 3x3 convs, average-pool, 1x1
    shortcut), a plain 3x3 conv block, ReLU, global sum pooling and a linear head."""

    def __init__(self, normalise):
        super().__init__()
        self.c1 = normalise(torch.nn.Conv2d(3, 8, 3, padding=1))
        self.c2 = normalise(torch.nn.Conv2d(8, 8, 3, padding=1))
        self.shortcut = normalise(torch.nn.Conv2d(3, 8, 1))
        self.c3 = normalise(torch.nn.Conv2d(8, 8, 3, padding=1))
        self.c4 = normalise(torch.nn.Conv2d(8, 8, 3, padding=1, stride=2))
        self.head = normalise(torch.nn.Linear(8, 1))

    def forward(self, x):
        pool = torch.nn.functional.avg_pool2d
        h = pool(self.c2(torch.relu(self.c1(x))), 2) + self.shortcut(pool(x, 2))
        h = self.c4(torch.nn.functional.leaky_relu(self.c3(torch.relu(h)), 0.1))
        return self.head(torch.relu(h).sum(dim=(2, 3)))


def sngan_pair(batched, device="cpu"):
    """PyTorch's spectral norm and ours on the same D; ours loads PyTorch's state dict (the same keys:
    parametrizations.weight.original, parametrizations.weight.0._u / _v), so weights, u and v are equal."""
    torch.manual_seed(5)
    theirs = SNGANLikeD(lambda layer: torch_spectral_norm(layer.to(device, DTYPE)))
    torch.manual_seed(6)  # other draws: the state dict, not the seed, makes them equal
    ours = SNGANLikeD(lambda layer: spectral_norm(layer.to(device, DTYPE)))
    assert list(ours.state_dict()) == list(theirs.state_dict())
    ours.load_state_dict(theirs.state_dict())
    for a, b in zip(ours.state_dict().values(), theirs.state_dict().values()):
        assert torch.equal(a, b)
    if batched:
        batch_spectral_norm(ours)
    return ours, theirs


def sn_buffers(d):
    return [t for k, t in d.state_dict().items() if k.endswith(("._u", "._v"))]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("batched", [False, True], ids=["per_layer", "batched"])
def test_sngan_like_d_wgan_gp_steps_match_pytorch_spectral_norm_and_textbook(batched, device):
    D, D_ref = sngan_pair(batched, device)
    opt, opt_ref = (torch.optim.Adam(d.parameters(), lr=1e-3, betas=(0.0, 0.9)) for d in (D, D_ref))
    assert len(sn_buffers(D)) == 2 * 6
    for step in range(3):
        real, fake = samples(20 + step, device)
        seed = 30 + step
        for o in (opt, opt_ref):
            o.zero_grad(set_to_none=True)
        # The same order of forwards on both sides (fake, real, interpolates): each one runs a power
        # iteration that updates u, v in place.
        with unregistered_autograd_is_an_error():
            critic = D(fake).mean() - D(real).mean()
            gp = penalties.wgan_gp(D, real, fake, 10.0, generator=torch.Generator(device).manual_seed(seed))
            (critic + gp).backward()
        critic_ref = D_ref(fake).mean() - D_ref(real).mean()
        gp_ref = textbook("wgan_gp", D_ref, real, fake, seed)
        (critic_ref + gp_ref).backward()
        assert gp > 0
        assert_close(gp.detach(), gp_ref.detach())
        assert_close(critic.detach(), critic_ref.detach())
        names = [k for k, _ in D.named_parameters()]
        assert names == [k for k, _ in D_ref.named_parameters()]
        for name, p, p_ref in zip(names, D.parameters(), D_ref.parameters()):
            if name != "head.bias":  # cancels in D(fake).mean() - D(real).mean() and the GP
                assert torch.count_nonzero(p_ref.grad) > 0, name
            assert_close(p.grad, p_ref.grad)
        for u, u_ref in zip(sn_buffers(D), sn_buffers(D_ref)):
            assert_close(u, u_ref)
        opt.step()
        opt_ref.step()
    D.eval(), D_ref.eval()
    x, _ = samples(40, device)
    assert_close(D(x), D_ref(x))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("helper", HELPERS)
def test_sngan_like_d_every_penalty_matches_textbook(helper, device):
    """The penalty alone (one D forward per penalty, one power iteration on each side)."""
    D, D_ref = sngan_pair(True, device)
    real, fake = samples(50, device)
    with unregistered_autograd_is_an_error():
        got = loss_and_grads(ours(helper, D, real, fake, seed=9), D)
    want = loss_and_grads(textbook(helper, D_ref, real, fake, seed=9), D_ref)
    # a ReLU network is piecewise linear in x: no bias moves the input gradient
    biases = {name for name in got[1] if name.endswith("bias")}
    assert_same_loss_and_grads(got, want, zero_grads=biases)


# --- checkpoint and resume ------------------------------------------------------------------------


class ResumableG(torch.nn.Module):
    """A mapping net and a synthesis net (ws -> [N, 3, 4, 4]) with a spectrally normalised conv and
    BatchNorm (an integer buffer): every kind of tensor GeneratorEMA averages."""

    def __init__(self):
        super().__init__()
        self.mapping = torch.nn.Sequential(
            gan_kernels.nn.EqualizedLinear(8, 8, activation="lrelu"), gan_kernels.nn.EqualizedLinear(8, 8)
        )
        self.fc = gan_kernels.nn.EqualizedLinear(8, 4 * 4 * 4, activation="lrelu")
        self.conv = spectral_norm(torch.nn.Conv2d(4, 4, 3, padding=1))
        self.out = torch.nn.Sequential(gan_kernels.nn.EqualizedConv2d(4, 3, 3), torch.nn.BatchNorm2d(3))

    def synthesis(self, ws):
        x = self.fc(ws).reshape(-1, 4, 4, 4)
        return self.out(torch.nn.functional.leaky_relu(self.conv(x), 0.2))

    def forward(self, z):
        return self.synthesis(self.mapping(z))


def resumable_run(dtype, batched, seed):
    """Everything stateful a user of gan_kernels builds; ``seed``: the initial draws (a restarted
    process gets other ones, which its checkpoint must override)."""
    torch.manual_seed(seed)
    D = torch.nn.Sequential(
        spectral_norm(torch.nn.Conv2d(3, 8, 3, padding=1)),
        torch.nn.LeakyReLU(0.2),
        gan_kernels.nn.MinibatchStd(2),
        spectral_norm(torch.nn.Conv2d(9, 8, 3, stride=2, padding=1)),
        torch.nn.LeakyReLU(0.2),
        torch.nn.Flatten(),
        spectral_norm(torch.nn.Linear(8 * 2 * 2, 1)),
    ).to(dtype)
    G = ResumableG().to(dtype)
    if batched:
        batch_spectral_norm(D)
    lazy_d, lazy_g = penalties.LazyRegularizer(2), penalties.LazyRegularizer(3)
    noise_generator = torch.Generator().manual_seed(seed + 1)
    return dict(
        D=D,
        G=G,
        lazy_d=lazy_d,
        lazy_g=lazy_g,
        opt_d=torch.optim.Adam(D.parameters(), *lazy_d.adam_hyperparameters(2e-3, (0.0, 0.99))),
        opt_g=torch.optim.Adam(G.parameters(), 2e-3, (0.0, 0.99)),
        ema=stabilizers.GeneratorEMA(G, decay=0.0),
        plr=penalties.PathLengthRegularizer().to(dtype),
        noise=stabilizers.InstanceNoise(0.1, 20, generator=noise_generator),
        noise_generator=noise_generator,
        monitor=StabilityMonitor(D, G, every=2, samples=4),
    )


def resumable_steps(run, steps, dtype):
    """A training loop using all of it; returns every value it computed, in order."""
    D, G, noise, monitor = run["D"], run["G"], run["noise"], run["monitor"]
    values = []
    for step in steps:
        real, z = torch.randn(4, 3, 4, 4, dtype=dtype), torch.randn(4, 8, dtype=dtype)
        fake = G(z)
        real_logits, fake_logits = D(noise(real)), D(noise(fake.detach()))
        loss_d = gan_kernels.losses.discriminator_loss(real_logits, fake_logits, "non_saturating")
        run["opt_d"].zero_grad()
        loss_d.backward()
        monitor.observe_gradients("D", D)
        run["opt_d"].step()
        r1 = run["lazy_d"](step, penalties.r1, D, real, 1.0)
        if r1 is not None:
            run["opt_d"].zero_grad()
            r1.backward()
            run["opt_d"].step()
            values.append(r1.detach())
        loss_g = gan_kernels.losses.generator_loss(D(noise(fake)), kind="non_saturating")
        if run["lazy_g"].due(step):
            ws = G.mapping(z).detach().requires_grad_()
            path_length = run["lazy_g"](step, run["plr"], G.synthesis(ws), ws)
            values += [path_length.detach(), run["plr"].mean_length.clone()]
            loss_g = loss_g + 2.0 * path_length
        run["opt_g"].zero_grad()
        loss_g.backward()
        monitor.observe_gradients("G", G)
        run["opt_g"].step()
        run["ema"].decay = stabilizers.half_life_decay(0.01, 4, images_seen=4 * step, rampup=0.5)
        run["ema"].update(G)
        noise.step()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", StabilityWarning)
            monitor.observe_samples(fake.detach(), real)
            monitor.observe(real_logits=real_logits, fake_logits=fake_logits, d_loss=loss_d, g_loss=loss_g)
        run["ema"].module.eval()  # a sample from the average, as an evaluation does
        with torch.no_grad():
            values += [loss_d.detach(), loss_g.detach(), run["ema"].module(torch.randn(2, 8, dtype=dtype))]
        run["ema"].module.train()
    return values


def run_state(run):
    """Every tensor of the run's state dicts, by name."""
    state = {f"{key}.{name}": t for key in ("D", "G", "ema", "plr") for name, t in run[key].state_dict().items()}
    for key in ("opt_d", "opt_g"):
        for index, entry in run[key].state_dict()["state"].items():
            state.update({f"{key}.{index}.{name}": t for name, t in entry.items()})
    return state


@pytest.mark.parametrize(("dtype", "batched"), [(torch.float64, False), (torch.float32, True)])
def test_a_run_resumed_from_a_checkpoint_continues_bitwise_as_the_uninterrupted_run(dtype, batched):
    """What the README's "Checkpoint and resume" lists, saved after 4 of 7 steps, read back with
    weights_only=True into objects built afresh (other initial draws): the spectral norms' u, v (per
    layer and batched), the EMA with its ramp, the path-length running mean, lazy R1, instance noise,
    the monitor and the random number generators carry the run on bitwise."""
    uninterrupted = resumable_run(dtype, batched, seed=0)
    expected = resumable_steps(uninterrupted, range(7), dtype)

    first = resumable_run(dtype, batched, seed=0)
    values = resumable_steps(first, range(4), dtype)
    buffer = io.BytesIO()
    torch.save(
        {
            **{key: first[key].state_dict() for key in ("D", "G", "opt_d", "opt_g", "ema", "plr", "noise", "monitor")},
            "rng": torch.get_rng_state(),
            "noise_generator": first["noise_generator"].get_state(),
            "step": 4,
        },
        buffer,
    )
    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)
    resumed = resumable_run(dtype, batched, seed=1)
    for key in ("D", "G", "opt_d", "opt_g", "ema", "plr", "noise", "monitor"):
        resumed[key].load_state_dict(checkpoint[key])
    torch.set_rng_state(checkpoint["rng"])
    resumed["noise_generator"].set_state(checkpoint["noise_generator"])
    values += resumable_steps(resumed, range(checkpoint["step"], 7), dtype)

    assert len(values) == len(expected)
    for got, want in zip(values, expected):
        assert got.dtype == want.dtype and torch.equal(got, want)
    state, want_state = run_state(resumed), run_state(uninterrupted)
    assert state.keys() == want_state.keys()
    for name, want in want_state.items():
        assert state[name].dtype == want.dtype and torch.equal(state[name], want), name
    assert resumed["monitor"].history == uninterrupted["monitor"].history
    assert resumed["monitor"].first_seen == uninterrupted["monitor"].first_seen
