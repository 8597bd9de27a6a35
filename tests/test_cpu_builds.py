"""The CPU kernels are built once per ATen CPU capability (csrc/cpu/capability.h). Spectral norm, the
gradient penalty and pixel norm sum in an order no build changes (csrc/cpu/vec_step.h's fixed lanes;
pixel norm's NCHW sums run over the channels in order, without fused multiply-adds), so they promise
the same bits from every build: each build available here runs in a fresh import of gan_kernels under
ATEN_CPU_CAPABILITY (tests/fresh_imports.py; ATen reads it at its first op, not at import)."""

import pytest
from fresh_imports import Case, run_fresh_imports
from helpers import requires_ops

# Prints the capability ATen was told and the build of our kernels that runs, then a digest of every
# output for seeded inputs: spectral norm's power iteration, normalisation and backward for a batch of
# unequal layers (one larger than a parallel task, with a ragged tail), the penalty with its backward,
# and pixel norm forward and backward along a contiguous dim (rows) and along dim 1 of NCHW (short and
# long blocks, with a ragged last vector), in float32 and bfloat16.
SCRIPT = """
import hashlib
import numpy as np
import torch
import gan_kernels  # noqa: F401

# numpy draws the inputs: torch.randn's own vectorised sampler gives other numbers in each build.
rng = np.random.default_rng(0)
digest = hashlib.sha256()


def randn(*shape, dtype):
    return torch.from_numpy(rng.standard_normal(shape, dtype=np.float32)).to(dtype)


def add(*tensors):
    for t in tensors:
        digest.update(t.contiguous().view(torch.uint8).numpy().tobytes())


ops = torch.ops.gan_kernels
for dtype in (torch.float32, torch.bfloat16):
    shapes = [(300, 129, 3), (7, 5), (33, 65, 2, 2)]
    dims = [0, 1, 0]
    ws = [randn(*s, dtype=dtype) for s in shapes]
    us = [randn(s[d], dtype=dtype) for s, d in zip(shapes, dims)]
    vs = [randn(w.numel() // s[d], dtype=dtype) for w, s, d in zip(ws, shapes, dims)]
    sigmas = ops.spectral_norm_power_iteration_(ws, us, vs, dims, 2, 1e-12)
    out = ops.spectral_norm_normalize(ws, us, vs, sigmas, dims)
    grads = [randn(*s, dtype=dtype) for s in shapes]
    add(sigmas, *us, *vs, *out, *ops.spectral_norm_normalize_backward(grads, ws, us, vs, sigmas, dims))
    g = randn(5, 3, 37, 41, dtype=dtype)
    penalty, sums = ops.gradient_penalty(g, 1.0)
    add(penalty, sums, ops.gradient_penalty_backward(randn(5, dtype=torch.float32), g, sums, 1.0))
    for shape, dim in (((70, 301), 1), ((3, 45, 7, 5), 1), ((2, 13, 19, 23), 1)):
        x, grad = randn(*shape, dtype=dtype), randn(*shape, dtype=dtype)
        add(ops.pixel_norm(x, dim, 1e-8), ops.pixel_norm_backward(grad, x, dim, 1e-8))
print(torch.backends.cpu.get_cpu_capability(), gan_kernels._backend._C.cpu_capability(), digest.hexdigest())
"""


@requires_ops
def test_fixed_order_kernels_give_the_same_bits_in_every_cpu_build():
    capabilities = ("default", "avx2", "avx512")
    digests = {}
    for capability, done in zip(
        capabilities, run_fresh_imports([Case(SCRIPT, env={"ATEN_CPU_CAPABILITY": c}) for c in capabilities])
    ):
        assert done.returncode == 0, done.stderr
        told, picked, digest = done.stdout.split()
        # ATen accepts "default" on every CPU (an x86 name elsewhere only earns a warning): told anything
        # else, it chose its capability before the variable was set.
        if capability == "default":
            assert told == "DEFAULT", "ATen chose its capability before the variable was set"
        if picked == capability:  # our kernels fall back to a lower build where the CPU lacks one
            digests[capability] = digest
    if len(digests) < 2:
        pytest.skip(f"only the {list(digests)} build runs on this CPU")
    assert len(set(digests.values())) == 1, digests
