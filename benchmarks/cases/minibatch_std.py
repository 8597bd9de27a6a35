import torch
from harness import (
    CPU_NORM_COPY_TARGETS,
    GPU_MINIBATCH_STD_COPY_TARGETS,
    Case,
    dtype_name,
    forward_backward_cases,
    shape_name,
)

import gan_kernels
from gan_kernels import reference


def r1_case(x, fns):
    """The regularised D step through the op: forward, dD/dx with create_graph, then the gradient of
    the R1 penalty w.r.t. x and a weight downstream of the op (so both derivatives of the backward
    run). torch.compile cannot double-differentiate, so eager and ours only."""
    leaf = x.detach().requires_grad_()
    n, c, h, w = x.shape
    weight = torch.randn(1, c + 1, h, w, device=x.device, dtype=x.dtype, requires_grad=True)

    def make(fn):
        def run():
            score = (fn(leaf, 4, 1) * weight).sum()
            (g,) = torch.autograd.grad(score, leaf, create_graph=True)
            return torch.autograd.grad(g.square().sum(), [leaf, weight])

        return run

    return Case("minibatch_std", shape_name(x.shape), dtype_name(x.dtype), "r1", {k: make(f) for k, f in fns.items()})


def cases(device, quick, compile_fn):
    if device.type == "cuda":
        # [32, 256, 64, 64] is larger than the GPU's L2 (benchmarks/NOTES.md); eager is too slow for it on a CPU.
        shapes = [(64, 512, 16, 16), (32, 512, 4, 4), (32, 256, 64, 64)]
        dtypes = [torch.float32, torch.bfloat16]
        copy_targets = {
            (shape, dtype): GPU_MINIBATCH_STD_COPY_TARGETS for shape in (shapes[0], shapes[2]) for dtype in dtypes
        }
    else:
        shapes = [(32, 512, 8, 8), (32, 256, 32, 32)]
        dtypes = [torch.float32, torch.bfloat16]
        copy_targets = {(shapes[1], torch.float32): CPU_NORM_COPY_TARGETS}
    if quick:
        shapes, dtypes = shapes[:1], dtypes[:1]
    fns = {"eager": reference.minibatch_std, "ours": gan_kernels.minibatch_std}
    out = []
    for shape in shapes:
        for dtype in dtypes:
            x = torch.randn(shape, device=device, dtype=dtype)
            n, c, h, w = shape
            out_bytes = x.nbytes // c * (c + 1)
            grad_out = torch.randn(n, c + 1, h, w, device=device, dtype=dtype)
            # forward: read x, write [x, std]; backward: read x and dy, write dx
            out += forward_backward_cases(
                "minibatch_std",
                (x, 4, 1),
                grad_out,
                fns,
                x.nbytes + out_bytes,
                2 * x.nbytes + out_bytes,
                compile_fn,
                copy_targets=copy_targets.get((shape, dtype)),
            )
            out.append(r1_case(x, fns))
    return out
