"""Shared test helpers: devices, dtypes, tolerances, layouts."""

import contextlib
import os
import warnings

import pytest
import torch

import gan_kernels
from gan_kernels import _backend, _checks, reference
from gan_kernels.nn import EqualizedConv2d, EqualizedLinear

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
# The CUDA emulation build is loaded (tests/conftest.py): the CPU cases run our CUDA kernels.
CUDA_EMULATION = os.environ.get("GAN_KERNELS_CUDA_EMULATION") in ("1", "asan")
FLOAT_DTYPES = list(_checks.FLOAT_DTYPES)

# Ours vs the reference, both accumulating in float: differences come from summation order (float64,
# float32) or from a final rounding to the output dtype landing on the other side (fp16, bf16: ~1 ulp).
TOLERANCES = {
    torch.float64: dict(rtol=1e-10, atol=1e-12),
    torch.float32: dict(rtol=1e-5, atol=1e-6),
    torch.float16: dict(rtol=2e-3, atol=2e-3),
    torch.bfloat16: dict(rtol=1.6e-2, atol=1.6e-2),
}

OPS_REGISTERED = _backend._C is not None
requires_ops = pytest.mark.skipif(not OPS_REGISTERED, reason="gan_kernels._C is not built")

LAYOUTS = ["contiguous", "channels_last", "strided", "permuted"]


def make_4d(shape, layout, dtype=torch.float64, device="cpu", generator=None):
    """Random N(0, 1) data of the given NCHW shape in one of LAYOUTS (never zeros)."""
    n, c, h, w = shape
    if layout == "contiguous":
        return torch.randn(shape, dtype=dtype, device=device)
    if layout == "channels_last":
        return torch.randn(shape, dtype=dtype, device=device).contiguous(memory_format=torch.channels_last)
    if layout == "strided":  # not dense: every other channel and column of a larger tensor
        return torch.randn(n, 2 * c, h, 2 * w, dtype=dtype, device=device)[:, ::2, :, ::2]
    if layout == "permuted":  # dense, but in W, N, H, C memory order
        return torch.randn(w, n, h, c, dtype=dtype, device=device).permute(1, 3, 2, 0)
    raise ValueError(layout)


def assert_close(actual, expected, dtype=None):
    torch.testing.assert_close(actual, expected, **TOLERANCES[dtype or expected.dtype])


@contextlib.contextmanager
def unregistered_autograd_is_an_error():
    """A missing autograd kernel silently gives a penalty no gradient; PyTorch only warns."""
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*autograd kernel was not registered.*")
        yield


def on_thread_counts(fn, counts=(1, 2, 3)):
    """``[fn() for each torch intra-op thread count in counts]``, the caller's count restored after.
    Counts above the machine's cores are fine: only how the work is split changes."""
    threads = torch.get_num_threads()
    results = []
    try:
        for count in counts:
            torch.set_num_threads(count)
            results.append(fn())
    finally:
        torch.set_num_threads(threads)
    return results


def assert_same_bits(results):
    """Every entry of ``results`` (lists of tensors) equal to the first, bit for bit."""
    for result in results[1:]:
        assert len(result) == len(results[0])
        for got, want in zip(result, results[0]):
            assert torch.equal(got, want), (got - want).abs().max()


def assert_same_penalty_and_grads(penalty_and_grads, ours, reference_fn):
    """A penalty through `ours` (with no op lacking an autograd kernel) gives the reference path's
    value and parameter gradients, each of them nonzero."""
    with unregistered_autograd_is_an_error():
        penalty, param_grads = penalty_and_grads(ours)
    penalty_ref, param_grads_ref = penalty_and_grads(reference_fn)
    assert_close(penalty, penalty_ref)
    for got, want in zip(param_grads, param_grads_ref):
        assert want.abs().sum() > 0
        assert_close(got, want)


def sum_of_squares(y):
    return y.square().sum()


# torch.compile's backend in the tests. Inductor where our ops run: it calls them from generated code,
# symbolic scalars included. Under GAN_KERNELS_IMPL=reference, AOTAutograd alone: there inductor would
# generate and compile C++ for the reference formulas' aten ops (torch's code, not ours; 90 s of a CI
# worker, half the reference pass), while what that pass checks of compile is that our functions
# trace: no graph break, fake tensors, symbolic shapes and scalars, the same values as eager.
COMPILE_BACKEND = "aot_eager" if _backend.IMPL == "reference" else "inductor"


def assert_compiled_matches_eager(
    model, x, eager=None, loss=sum_of_squares, output_tolerance=(1e-5, 1e-5), gradient_tolerance=(1e-4, 1e-4)
):
    """torch.compile(fullgraph=True) of a module or function using our ops: no graph break, and the
    output and the gradient of ``loss(output)`` with respect to ``x`` (a tensor or a list of them)
    that ``eager`` (default: ``model`` itself, not compiled) gives, within (rtol, atol) tolerances
    (None: assert_close's default for the dtype)."""
    leaves = [t.detach().requires_grad_() for t in x] if isinstance(x, list) else x.detach().requires_grad_()
    y = torch.compile(model, fullgraph=True, backend=COMPILE_BACKEND)(leaves)
    gx = torch.autograd.grad(loss(y), leaves)
    y_ref = (model if eager is None else eager)(leaves)
    gx_ref = torch.autograd.grad(loss(y_ref), leaves)
    for got, want, tolerance in ((y, y_ref, output_tolerance), (gx, gx_ref, gradient_tolerance)):
        rtol, atol = tolerance or (None, None)
        torch.testing.assert_close(got, want, rtol=rtol, atol=atol)


# The equalized layers in plain PyTorch, as oracles for ours: the same parameters and forward, with
# the epilogue computed by the reference formula instead of the op.
class ReferenceEqualizedLinear(EqualizedLinear):
    _bias_act = staticmethod(reference.bias_act)


class ReferenceEqualizedConv2d(EqualizedConv2d):
    _bias_act = staticmethod(reference.bias_act)


# --- spectral norm: weights with their power-iteration vectors ------------------------------------

# (shape, dim) of weights, as spectral norm sees them: dim moved first, the rest flattened.
SPECTRAL_SHAPES = [((5, 7), 0), ((4, 3, 3, 2), 0), ((3, 4, 2, 2), 1), ((1, 6), 0), ((6, 2, 3), 2)]


def random_spectral_layers(dtype=torch.float64, device="cpu", shapes=SPECTRAL_SHAPES):
    """Random weights and unit u, v of the right lengths: the lists the spectral-norm ops take."""
    weights, us, vs, dims = [], [], [], []
    for shape, dim in shapes:
        w = torch.randn(shape, dtype=dtype, device=device)
        rows = shape[dim]
        weights.append(w)
        us.append(torch.nn.functional.normalize(torch.randn(rows, dtype=dtype, device=device), dim=0))
        vs.append(torch.nn.functional.normalize(torch.randn(w.numel() // rows, dtype=dtype, device=device), dim=0))
        dims.append(dim)
    return weights, us, vs, dims


def normalised_weights(weights, us, vs, dims, steps=1):
    """The normalised weights as a function of W alone: u, v reset before each call (as PyTorch's
    own gradcheck of spectral norm does), so gradcheck's perturbed calls see the same start."""
    us, vs = [u.clone() for u in us], [v.clone() for v in vs]
    sigmas = gan_kernels.spectral_norm_power_iteration_([w.detach() for w in weights], us, vs, dims, steps, 1e-12)
    return gan_kernels.spectral_norm_normalize(weights, us, vs, sigmas, dims)
