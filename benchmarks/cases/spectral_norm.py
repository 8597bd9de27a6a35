"""Spectral norm: PyTorch's parametrization ("eager") against ours.

Cases: one layer on its own (ours per layer, no batch_spectral_norm): the training forward (power
iteration and W / sigma) and forward+backward, from a 16x16 weight, whose time is the per-call
overhead of either implementation, to a 512x512x3x3 conv; the spectral-norm part of a training step
(power iteration, normalisation and their backward for every layer of an SNGAN-ResNet-like D, ours
batched over the model); and a whole WGAN-GP D step on that D. On CUDA also the 22 layers of a
StyleGAN2-size D (issue 14's targets): one power-iteration step of all of them (eager: the reference's
per-layer PyTorch ops), and their spectral-norm part of a training step; and it counts the kernel
launches of the spectral-norm work of one forward with 12 and 24 layers. torch.compile is not timed:
the power iteration mutates buffers and the GP step needs double backward.
"""

import torch
from harness import DROP_IN_TARGET, Case, LaunchCase, dtype_name, shape_name

from gan_kernels import reference, spectral_norm_power_iteration_
from gan_kernels.nn import batch_spectral_norm, spectral_norm
from torch.nn.utils.parametrizations import spectral_norm as torch_spectral_norm

NOT_COMPILED = RuntimeError("not applicable: mutating power iteration / double backward")
# Issue 15: the 11 layers of the SNGAN D batched into one call per forward, at least 1.5x PyTorch's.
BATCHED_TARGET = 1.5
# One layer's weight: a tiny linear (the per-call overhead), a 128-channel and a 512-channel 3x3 conv.
LAYER_SHAPES = [(16, 16), (128, 128, 3, 3), (512, 512, 3, 3)]
# The spectral-norm layers of a StyleGAN2-size D at 256x256 (benchmarks/NOTES.md): fromrgb; per block
# two 3x3 convs and a 1x1 skip (the 256 and 128 blocks widening, the 64 to 8 blocks at 512); the
# epilogue conv over 513 channels (minibatch stddev's extra one), fc and out. 22 layers, 28,857,728
# weights, 115.4 MB in float32.
STYLEGAN2_D_SHAPES = (
    [(128, 3, 1, 1)]
    + [(128, 128, 3, 3), (256, 128, 3, 3), (256, 128, 1, 1)]
    + [(256, 256, 3, 3), (512, 256, 3, 3), (512, 256, 1, 1)]
    + [(512, 512, 3, 3), (512, 512, 3, 3), (512, 512, 1, 1)] * 4
    + [(512, 513, 3, 3), (512, 8192), (1, 512)]
)
# Issue 14: their power iteration within 2x of the time to read their weights once at copy bandwidth
# (so at least half of it, counting one read), and their spectral-norm part of a D step at least 5x
# PyTorch's per-layer spectral norm.
POWER_ITERATION_COPY_TARGET = 0.5
SN_PART_TARGET = 5.0
# Issue 14: the spectral-norm work of a training forward in at most 8 kernel launches for 12 or 24 layers.
LAUNCH_TARGET = 8
LAUNCH_LAYERS = (12, 24)


class DisBlock(torch.nn.Module):
    """SNGAN's ResNet discriminator block: two 3x3 convs, optional 2x average-pool, 1x1 shortcut
    when the shape changes."""

    def __init__(self, cin, cout, normalise, downsample, first=False):
        super().__init__()
        self.first, self.downsample = first, downsample
        self.c1 = normalise(torch.nn.Conv2d(cin, cout, 3, padding=1))
        self.c2 = normalise(torch.nn.Conv2d(cout, cout, 3, padding=1))
        self.shortcut = normalise(torch.nn.Conv2d(cin, cout, 1)) if cin != cout or downsample else None

    def forward(self, x):
        h = x if self.first else torch.relu(x)
        h = self.c2(torch.relu(self.c1(h)))
        s = x
        if self.downsample:
            h = torch.nn.functional.avg_pool2d(h, 2)
        if self.shortcut is not None:
            s = self.shortcut(torch.nn.functional.avg_pool2d(s, 2) if self.first else s)
            if self.downsample and not self.first:
                s = torch.nn.functional.avg_pool2d(s, 2)
        return h + s


class SNGANResNetD(torch.nn.Module):
    """CIFAR-10 SNGAN ResNet D (Miyato et al.): 11 spectrally normalised layers at width 128."""

    def __init__(self, normalise, width=128):
        super().__init__()
        self.blocks = torch.nn.Sequential(
            DisBlock(3, width, normalise, True, first=True),
            DisBlock(width, width, normalise, True),
            DisBlock(width, width, normalise, False),
            DisBlock(width, width, normalise, False),
        )
        self.head = normalise(torch.nn.Linear(width, 1))

    def forward(self, x):
        return self.head(torch.relu(self.blocks(x)).sum(dim=(2, 3)))


class NormalisedWeights(torch.nn.Module):
    """Returns every spectrally normalised weight of a model: the spectral-norm work of one forward."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.owners = [m for m in model.modules() if hasattr(m, "parametrizations")]

    def forward(self):
        return [m.weight for m in self.owners]


def make_d(normalise, device, dtype):
    torch.manual_seed(0)
    return SNGANResNetD(lambda layer: normalise(layer.to(device, dtype)))


def gp_step(d, real, fake, eps):
    def run():
        d.zero_grad(set_to_none=True)
        x_hat = (eps * real + (1 - eps) * fake).requires_grad_()
        (g,) = torch.autograd.grad(d(x_hat).sum(), x_hat, create_graph=True)
        penalty = 10 * (g.flatten(1).norm(dim=1) - 1).square().mean()
        (d(fake).mean() - d(real).mean() + penalty).backward()

    return run


def launch_case(device, n_layers):
    """The spectral-norm work of one training forward of n_layers 64-channel 3x3 conv layers, PyTorch's
    per layer against ours batched, whose device operations issue 14 allows at most LAUNCH_TARGET of."""
    layers = {}
    for name, normalise in (("eager", torch_spectral_norm), ("ours", spectral_norm)):
        torch.manual_seed(0)
        layers[name] = torch.nn.Sequential(*[normalise(torch.nn.Conv2d(64, 64, 3).to(device)) for _ in range(n_layers)])
    weights = {name: NormalisedWeights(model) for name, model in layers.items()}
    batch_spectral_norm(weights["ours"])
    return LaunchCase("spectral_norm", f"{n_layers}_layers_64x64x3x3", "float32", "sn forward", weights, LAUNCH_TARGET)


def sn_part(model, batched):
    """The spectral-norm part of a training step of `model`: every normalised weight (power iteration
    and W / sigma) and their backward, from fixed upstream gradients."""
    weights = NormalisedWeights(model)
    if batched:
        batch_spectral_norm(weights)
    grads = [torch.randn_like(w) for w in weights()]
    return lambda: torch.autograd.backward(weights(), grads)


def one_layer(normalise, shape, device, dtype):
    torch.manual_seed(0)
    layer = torch.nn.Linear(shape[1], shape[0]) if len(shape) == 2 else torch.nn.Conv2d(shape[1], shape[0], shape[2])
    return normalise(layer.to(device, dtype))


def layer_cases(device, dtype, shape):
    """One layer's training forward (power iteration, W / sigma and its graph) and forward+backward,
    PyTorch's parametrization against ours without batching. Ideal traffic: the power iteration
    reads W twice (W v, W^T u; sigma = (W^T u) . v needs no third pass), W / sigma reads and writes
    it, the backward reads the gradient and W and writes dW."""
    layers = {"eager": one_layer(torch_spectral_norm, shape, device, dtype)}
    layers["ours"] = one_layer(spectral_norm, shape, device, dtype)
    layers["ours"].load_state_dict(layers["eager"].state_dict())  # same keys: same W, u, v
    grad = torch.randn(shape, device=device, dtype=dtype)
    weight_bytes = grad.nbytes
    op = "spectral_norm per-call overhead" if shape == LAYER_SHAPES[0] else "spectral_norm one layer"

    def fwd(layer):
        return lambda: layer.weight

    def fwd_bwd(layer):
        original = layer.parametrizations.weight.original
        return lambda: torch.autograd.grad(layer.weight, original, grad)

    return [
        Case(
            op,
            shape_name(shape),
            dtype_name(dtype),
            mode,
            {"eager": make(layers["eager"]), "compile": NOT_COMPILED, "ours": make(layers["ours"])},
            traffic * weight_bytes,
            eager_target=DROP_IN_TARGET,
        )
        for mode, make, traffic in (("layer fwd", fwd, 4), ("layer fwd+bwd", fwd_bwd, 7))
    ]


def cases(device, quick, compile_fn):
    dtype = torch.float32
    out = []
    for shape in LAYER_SHAPES[:1] if quick else LAYER_SHAPES:
        out += layer_cases(device, dtype, shape)
    models = {"eager": make_d(torch_spectral_norm, device, dtype), "ours": make_d(spectral_norm, device, dtype)}
    batch_spectral_norm(models["ours"])
    owners = NormalisedWeights(models["ours"]).owners
    n_layers = len(owners)
    # As one layer's (layer_cases): 7 passes over every weight.
    weight_bytes = sum(m.parametrizations.weight.original.nbytes for m in owners)

    out.append(
        Case(
            "spectral_norm",
            f"sngan_d_{n_layers}_layers",
            dtype_name(dtype),
            "sn fwd+bwd",
            {"eager": sn_part(models["eager"], False), "compile": NOT_COMPILED, "ours": sn_part(models["ours"], True)},
            7 * weight_bytes,
            eager_target=BATCHED_TARGET,
        )
    )
    batch = 64 if device.type == "cuda" else 8  # CPU double backward of convs is slow: keep the run short
    torch.manual_seed(1)
    real, fake = (torch.randn(batch, 3, 32, 32, device=device, dtype=dtype) for _ in range(2))
    eps = torch.rand(batch, 1, 1, 1, device=device, dtype=dtype)
    if not quick:
        out.append(
            Case(
                "spectral_norm",
                f"sngan_d_{batch}x3x32x32",
                dtype_name(dtype),
                "wgan-gp step",
                {
                    "eager": gp_step(models["eager"], real, fake, eps),
                    "compile": NOT_COMPILED,
                    "ours": gp_step(models["ours"], real, fake, eps),
                },
                eager_target=DROP_IN_TARGET,
            )
        )
    if device.type == "cuda":
        out += stylegan2_d_cases(device)
        out += [launch_case(device, n) for n in LAUNCH_LAYERS]
    return out


def stylegan2_d_power_iteration(device, dtype):
    """One power-iteration step and sigma of every layer of STYLEGAN2_D_SHAPES, ours in one call and the
    reference's per-layer PyTorch ops, each on its own copy of the same u and v."""
    torch.manual_seed(0)
    weights = [torch.randn(shape, device=device, dtype=dtype) for shape in STYLEGAN2_D_SHAPES]
    us = [torch.nn.functional.normalize(torch.randn(w.shape[0], device=device, dtype=dtype), dim=0) for w in weights]
    vs = [torch.nn.functional.normalize(torch.randn(w[0].numel(), device=device, dtype=dtype), dim=0) for w in weights]
    dims = [0] * len(weights)

    def step(power_iteration):
        u, v = [t.clone() for t in us], [t.clone() for t in vs]
        return lambda: power_iteration(weights, u, v, dims, 1, 1e-12)

    return Case(
        "spectral_norm power iteration",
        f"stylegan2_d_{len(weights)}_layers",
        dtype_name(dtype),
        "1 step + sigma",
        {
            "eager": step(reference.spectral_norm_power_iteration_),
            "compile": NOT_COMPILED,
            "ours": step(spectral_norm_power_iteration_),
        },
        sum(w.nbytes for w in weights),  # one read of every weight: the target's yardstick
        eager_target=None,  # no target against the reference; the copy share is the target
        copy_target=POWER_ITERATION_COPY_TARGET,
    )


def stylegan2_d_cases(device):
    """Issue 14's spectral-norm targets on the layers of a StyleGAN2-size D (CUDA only: 115 MB of weights
    in float32): the power iteration in float32 and bfloat16, and the spectral-norm part of a training
    step in float32, ours batched against PyTorch's parametrization per layer."""
    dtype = torch.float32
    models = {
        name: torch.nn.ModuleList(one_layer(normalise, shape, device, dtype) for shape in STYLEGAN2_D_SHAPES)
        for name, normalise in (("eager", torch_spectral_norm), ("ours", spectral_norm))
    }
    models["ours"].load_state_dict(models["eager"].state_dict())
    weight_bytes = sum(m.parametrizations.weight.original.nbytes for m in models["ours"])
    return [
        stylegan2_d_power_iteration(device, torch.float32),
        stylegan2_d_power_iteration(device, torch.bfloat16),
        Case(
            "spectral_norm",
            f"stylegan2_d_{len(STYLEGAN2_D_SHAPES)}_layers",
            dtype_name(dtype),
            "sn fwd+bwd",
            {"eager": sn_part(models["eager"], False), "compile": NOT_COMPILED, "ours": sn_part(models["ours"], True)},
            7 * weight_bytes,  # as the SNGAN D's: see layer_cases
            eager_target=SN_PART_TARGET,
        ),
    ]
