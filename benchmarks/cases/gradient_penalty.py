"""Gradient penalty: the per-sample penalty op (fwd, bwd, fwd+bwd) and one R1 discriminator step."""

import torch
from harness import (
    DROP_IN_TARGET,
    GPU_ELEMENTWISE_COPY_TARGETS,
    GPU_ELEMENTWISE_EAGER_TARGETS,
    Case,
    dtype_name,
    forward_backward_cases,
    shape_name,
)

import gan_kernels
from gan_kernels import reference


def penalty_fns(center):
    def eager(g):
        return reference.per_sample_penalty(g, center)

    def ours(g):
        return gan_kernels.per_sample_penalty(g, center)

    return {"eager": eager, "ours": ours}


class ReferencePixelNorm(torch.nn.Module):
    def forward(self, x):
        return reference.pixel_norm(x)


def stylegan2_like_d(resolution, max_channels, pixel_norm):
    """Conv + lrelu blocks halving the resolution down to 4x4, then a linear head: the shape of the
    StyleGAN2 discriminator (without its residual skips and minibatch-stddev epilogue)."""
    layers = [torch.nn.Conv2d(3, max_channels // 4, 1), torch.nn.LeakyReLU(0.2)]
    channels = max_channels // 4
    while resolution > 4:
        out = min(2 * channels, max_channels)
        layers += [torch.nn.Conv2d(channels, out, 3, stride=2, padding=1), torch.nn.LeakyReLU(0.2), pixel_norm()]
        channels, resolution = out, resolution // 2
    layers += [torch.nn.Flatten(), torch.nn.Linear(channels * 16, 1)]
    return torch.nn.Sequential(*layers)


def r1_step_case(device, shape, max_channels, gamma=10.0):
    torch.manual_seed(0)
    ours_d = stylegan2_like_d(shape[-1], max_channels, gan_kernels.nn.PixelNorm).to(device)
    eager_d = stylegan2_like_d(shape[-1], max_channels, ReferencePixelNorm).to(device)
    eager_d.load_state_dict(ours_d.state_dict())
    real = torch.randn(shape, device=device)

    def step(D, penalty):
        def run():
            D.zero_grad(set_to_none=True)
            x = real.detach().requires_grad_()
            logits = D(x)
            loss = torch.nn.functional.softplus(-logits).mean() + gamma / 2 * penalty(logits, x).mean()
            loss.backward()

        return run

    impls = {
        "eager": step(eager_d, lambda logits, x: reference.gradient_penalty(logits, x, 0.0)),
        "compile": RuntimeError("torch.compile cannot run the double backward of a gradient penalty"),
        "ours": step(ours_d, lambda logits, x: gan_kernels.gradient_penalty(logits, x, 0.0)),
    }
    return Case("r1 step (D)", shape_name(shape), dtype_name(real.dtype), "r1 step", impls, eager_target=DROP_IN_TARGET)


def cases(device, quick, compile_fn):
    if device.type == "cuda":
        shapes = [(32, 3, 256, 256), (32, 512, 16, 16)]
        dtypes = [torch.float32, torch.bfloat16, torch.float16]
        r1_shapes = [((32, 3, 256, 256), 256)]
        copy_targets = {shapes[0]: GPU_ELEMENTWISE_COPY_TARGETS}
        eager_targets = {shapes[0]: GPU_ELEMENTWISE_EAGER_TARGETS}
        compile_targets = {shapes[0]}
    else:
        shapes = [(64, 3, 64, 64)]
        dtypes = [torch.float32, torch.bfloat16]
        r1_shapes = [((8, 3, 32, 32), 64)]
        copy_targets = eager_targets = {}
        compile_targets = set()
    centers = [1.0, 0.0]
    if quick:
        shapes, dtypes, centers = shapes[:1], dtypes[:1], centers[:1]
    out = []
    for shape in shapes:
        for dtype in dtypes:
            for center in centers:
                g = torch.randn(shape, device=device, dtype=dtype)
                grad_out = torch.randn(shape[0], device=device, dtype=dtype)
                # forward: read g; backward: read g, write dL/dg (the per-sample vectors are negligible)
                out += forward_backward_cases(
                    f"penalty c={center:g}",
                    (g,),
                    grad_out,
                    penalty_fns(center),
                    g.nbytes,
                    2 * g.nbytes,
                    compile_fn,
                    copy_targets=copy_targets.get(shape),
                    eager_targets=eager_targets.get(shape),
                    compile_target=shape in compile_targets,
                )
    for shape, max_channels in r1_shapes:
        out.append(r1_step_case(device, shape, max_channels))
    return out
