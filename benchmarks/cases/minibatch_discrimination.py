"""Minibatch discrimination's pairwise op at the paper's B = 100 kernels of C = 5 dims: forward,
backward, forward+backward and the R1 path (double backward), against the eager formula."""

import torch
from harness import Case, dtype_name, forward_backward_cases, shape_name

import gan_kernels
from gan_kernels import reference


def r1_case(m, fns):
    """dD/dm with create_graph for a D that weighs o, then the gradient of a penalty on it w.r.t. m
    and the weight (both derivatives of the backward run). Eager and ours: torch.compile cannot
    double-differentiate."""
    leaf = m.detach().requires_grad_()
    weight = torch.randn(1, m.shape[1], device=m.device, dtype=m.dtype, requires_grad=True)

    def make(fn):
        def run():
            (g,) = torch.autograd.grad((fn(leaf) * weight).sum(), leaf, create_graph=True)
            return torch.autograd.grad(g.square().sum(), [leaf, weight])

        return run

    return Case(
        "minibatch_discrimination", shape_name(m.shape), dtype_name(m.dtype), "r1", {k: make(f) for k, f in fns.items()}
    )


def cases(device, quick, compile_fn):
    samples = [64, 128] if not quick else [64]
    dtypes = [torch.float32, torch.bfloat16] if device.type == "cuda" and not quick else [torch.float32]
    fns = {"eager": reference.minibatch_discrimination, "ours": gan_kernels.minibatch_discrimination}
    out = []
    for n in samples:
        for dtype in dtypes:
            # N(0, 1/C^2) values put pairs at L1 distance ~1, as the layer's initialisation does.
            m = (torch.randn(n, 100, 5, device=device) / 5).to(dtype)
            o_bytes = m.nbytes // 5
            grad_out = torch.randn(n, 100, device=device, dtype=dtype)
            # forward: read m, write o; backward: read m and do, write dm (the pair work is compute)
            out += forward_backward_cases(
                "minibatch_discrimination", (m,), grad_out, fns, m.nbytes + o_bytes, 2 * m.nbytes + o_bytes, compile_fn
            )
            out.append(r1_case(m, fns))
    return out
