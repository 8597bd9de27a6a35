"""End to end (issue 7): whole discriminator steps, our layers against the eager reference layers on
the same weights.

* StyleGAN2-like D (resnet architecture: fromRGB, per resolution two 3x3 convs + a 1x1 skip at gain
  sqrt(0.5), stride-2 downsampling, conv_clamp 256; epilogue MinibatchStd(4, 1), 3x3 conv, fc, out),
  non-saturating logistic loss on reals and fakes, plus lazy R1 on the real logits (gamma 10,
  interval 16, the factor 16 applied on every timed step, so "d step + r1" is a regularised step;
  "d step" is the unregularised step between two of them).
  eager: EqualizedConv2d / EqualizedLinear on reference.bias_act, reference.minibatch_std and the
  textbook R1 (autograd.grad with create_graph, sum of squares); ours: gan_kernels.nn layers and
  gan_kernels.gradient_penalty.
* SNGAN-like D (the ResNet D of cases/spectral_norm.py), WGAN-GP critic step: D(fake) - D(real) +
  10 * GP at per-sample interpolates, each of the three forwards one power iteration per layer.
  eager: torch.nn.utils.parametrizations.spectral_norm and the textbook GP; ours:
  gan_kernels.nn.spectral_norm + batch_spectral_norm and gan_kernels.penalties.wgan_gp.

Each timed call is one step: zero the grads, forwards, loss, penalty, backward to every parameter.
torch.compile cannot run the double backward of a gradient penalty (AOTAutograd raises), so the
regularised steps have no compile column; the unregularised StyleGAN2 step compiles the eager D.
"""

import math

import torch
from cases.spectral_norm import SNGANResNetD
from harness import DROP_IN_TARGET, Case, dtype_name, shape_name
from torch.nn.utils.parametrizations import spectral_norm as torch_spectral_norm

import gan_kernels
from gan_kernels import penalties, reference
from gan_kernels.nn import batch_spectral_norm, spectral_norm

NO_DOUBLE_BACKWARD = RuntimeError("torch.compile cannot run the double backward of a gradient penalty")

R1_GAMMA = 10.0
R1_INTERVAL = 16  # StyleGAN2's lazy R1 interval
GP_WEIGHT = 10.0


# --- StyleGAN2-like D -----------------------------------------------------------------------------


class ReferenceEqualizedConv2d(gan_kernels.nn.EqualizedConv2d):
    """The layer in eager PyTorch: its epilogue is the reference formula, not the op."""

    _bias_act = staticmethod(reference.bias_act)


class ReferenceEqualizedLinear(gan_kernels.nn.EqualizedLinear):
    _bias_act = staticmethod(reference.bias_act)


class ReferenceMinibatchStd(torch.nn.Module):
    def forward(self, x):
        return reference.minibatch_std(x, 4, 1)


OUR_LAYERS = dict(
    conv=gan_kernels.nn.EqualizedConv2d,
    linear=gan_kernels.nn.EqualizedLinear,
    mbstd=lambda: gan_kernels.nn.MinibatchStd(4, 1),
)
REFERENCE_LAYERS = dict(conv=ReferenceEqualizedConv2d, linear=ReferenceEqualizedLinear, mbstd=ReferenceMinibatchStd)


class DBlock(torch.nn.Module):
    """StyleGAN2's resnet DiscriminatorBlock, with a stride-2 conv in place of blur + stride."""

    def __init__(self, layers, cin, cout, conv_clamp):
        super().__init__()
        conv = layers["conv"]
        self.conv0 = conv(cin, cin, 3, activation="lrelu", conv_clamp=conv_clamp)
        self.conv1 = conv(cin, cout, 3, activation="lrelu", conv_clamp=conv_clamp, stride=2)
        self.skip = conv(cin, cout, 1, bias=False, stride=2, padding=0)

    def forward(self, x):
        y = self.skip(x, gain=math.sqrt(0.5))
        return y + self.conv1(self.conv0(x), gain=math.sqrt(0.5))


class StyleGAN2LikeD(torch.nn.Module):
    """Channels min(channel_base / resolution, max_channels), as StyleGAN2 (channel_base 16384 is
    its 256x256 / CIFAR configuration's; the paper's 1024 config uses 32768)."""

    def __init__(self, layers, resolution, max_channels=512, channel_base=16384, conv_clamp=256):
        super().__init__()

        def channels(res):
            return min(channel_base // res, max_channels)

        self.from_rgb = layers["conv"](3, channels(resolution), 1, activation="lrelu", conv_clamp=conv_clamp)
        blocks = []
        res = resolution
        while res > 4:
            blocks.append(DBlock(layers, channels(res), channels(res // 2), conv_clamp))
            res //= 2
        self.blocks = torch.nn.Sequential(*blocks)
        c = channels(4)
        self.mbstd = layers["mbstd"]()
        self.conv = layers["conv"](c + 1, c, 3, activation="lrelu", conv_clamp=conv_clamp)
        self.fc = layers["linear"](c * 16, c, activation="lrelu")
        self.out = layers["linear"](c, 1)

    def forward(self, x):
        x = self.blocks(self.from_rgb(x))
        x = self.conv(self.mbstd(x))
        return self.out(self.fc(x.flatten(1)))


def textbook_r1(logits, x):
    (g,) = torch.autograd.grad(logits.sum(), x, create_graph=True)
    return g.square().flatten(1).sum(1)


def stylegan2_step(D, real, fake, r1):
    """One D step; with ``r1`` (a per-sample penalty of (real logits, reals)) a regularised one."""

    def run():
        D.zero_grad(set_to_none=True)
        x = real.detach().requires_grad_(r1 is not None)
        real_logits = D(x)
        loss = torch.nn.functional.softplus(D(fake)).mean() + torch.nn.functional.softplus(-real_logits).mean()
        if r1 is not None:
            loss = loss + R1_INTERVAL * (R1_GAMMA / 2) * r1(real_logits, x).mean()
        loss.backward()

    return run


def stylegan2_cases(device, quick, compile_fn, shape, max_channels, dtype=torch.float32):
    torch.manual_seed(0)
    ours = StyleGAN2LikeD(OUR_LAYERS, shape[-1], max_channels).to(device)
    with torch.no_grad():  # the layers init biases to 0; random biases are more general
        for name, p in ours.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.1)
    eager = StyleGAN2LikeD(REFERENCE_LAYERS, shape[-1], max_channels).to(device)
    eager.load_state_dict(ours.state_dict())
    real = torch.randn(shape, device=device, dtype=dtype)
    fake = torch.randn(shape, device=device, dtype=dtype)
    op = f"e2e stylegan2 D c<={max_channels}"
    out = []
    if not quick:
        compiled = compile_fn(eager)
        out.append(
            Case(
                op,
                shape_name(shape),
                dtype_name(dtype),
                "d step",
                {
                    "eager": stylegan2_step(eager, real, fake, None),
                    "compile": compiled
                    if isinstance(compiled, Exception)
                    else stylegan2_step(compiled, real, fake, None),
                    "ours": stylegan2_step(ours, real, fake, None),
                },
                eager_target=DROP_IN_TARGET,
            )
        )
    out.append(
        Case(
            op,
            shape_name(shape),
            dtype_name(dtype),
            "d step + r1",
            {
                "eager": stylegan2_step(eager, real, fake, textbook_r1),
                "compile": NO_DOUBLE_BACKWARD,
                "ours": stylegan2_step(
                    ours, real, fake, lambda logits, x: gan_kernels.gradient_penalty(logits, x, 0.0)
                ),
            },
            eager_target=DROP_IN_TARGET,
        )
    )
    return out


# --- SNGAN-like D with spectral norm and WGAN-GP --------------------------------------------------


def textbook_wgan_gp(D, real, fake):
    eps = torch.rand((real.shape[0], 1, 1, 1), device=real.device, dtype=real.dtype)
    x = (eps * real + (1 - eps) * fake).requires_grad_()
    (g,) = torch.autograd.grad(D(x).sum(), x, create_graph=True)
    return GP_WEIGHT * (g.flatten(1).norm(dim=1) - 1).square().mean()


def wgan_gp_step(D, real, fake, gp):
    def run():
        D.zero_grad(set_to_none=True)
        loss = D(fake).mean() - D(real).mean() + gp(D, real, fake)
        loss.backward()

    return run


def sngan_case(device, shape, width, dtype=torch.float32):
    torch.manual_seed(0)
    eager = SNGANResNetD(lambda layer: torch_spectral_norm(layer.to(device, dtype)), width)
    ours = SNGANResNetD(lambda layer: spectral_norm(layer.to(device, dtype)), width)
    ours.load_state_dict(eager.state_dict())  # the same keys: weights, u and v equal
    batch_spectral_norm(ours)
    real = torch.randn(shape, device=device, dtype=dtype)
    fake = torch.randn(shape, device=device, dtype=dtype)
    return Case(
        f"e2e sngan D w={width}",
        shape_name(shape),
        dtype_name(dtype),
        "d step + wgan-gp + sn",
        {
            "eager": wgan_gp_step(eager, real, fake, textbook_wgan_gp),
            "compile": NO_DOUBLE_BACKWARD,
            "ours": wgan_gp_step(ours, real, fake, lambda D, r, f: penalties.wgan_gp(D, r, f, GP_WEIGHT)),
        },
        eager_target=DROP_IN_TARGET,
    )


def cases(device, quick, compile_fn):
    if device.type == "cuda":
        stylegan2 = [((32, 3, 64, 64), 512), ((32, 3, 128, 128), 512)]
        sngan = [((64, 3, 32, 32), 128)]
    else:  # small enough that one eager step stays well under a second on a few cores
        stylegan2 = [((8, 3, 32, 32), 64)]
        sngan = [((8, 3, 32, 32), 64)]
    if quick:
        stylegan2 = [((32, 3, 64, 64), 512)] if device.type == "cuda" else [((4, 3, 16, 16), 32)]
        sngan = sngan if device.type == "cuda" else [((4, 3, 16, 16), 32)]
    out = []
    for shape, max_channels in stylegan2:
        out += stylegan2_cases(device, quick, compile_fn, shape, max_channels)
    for shape, width in sngan:
        out.append(sngan_case(device, shape, width))
    return out
