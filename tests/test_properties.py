"""Property tests: every public op against its reference over random shapes, memory layouts, dtypes,
devices and the forms a scalar argument comes in (Python numbers, numpy scalars, 0-d tensors).

The suite runs once with the compiled ops and once with GAN_KERNELS_IMPL=reference (make test), so
these also check that both backends accept the same arguments."""

import numpy as np
import torch
from helpers import DEVICES, FLOAT_DTYPES, assert_close
from hypothesis import given, settings
from hypothesis import strategies as st

import gan_kernels
from gan_kernels import reference

SETTINGS = settings(max_examples=30, deadline=None)


def _as_scalar_type(value, kind):
    """``value`` in the form a user might pass it."""
    return {
        "python": value,
        "numpy32": np.float32(value),
        "numpy64": np.float64(value),
        "tensor": torch.tensor(value),
    }[kind]


def _as_int_type(value, kind):
    return {"python": value, "numpy": np.int64(value), "tensor": torch.tensor(value)}[kind]


scalar_kinds = st.sampled_from(["python", "numpy32", "numpy64", "tensor"])
int_kinds = st.sampled_from(["python", "numpy", "tensor"])


def _random_tensor(data, shape, dtype, device, label="x"):
    """N(0, 1) data of ``shape`` in a random memory order, sometimes not dense (every other element
    along a random dim)."""
    order = data.draw(st.permutations(range(len(shape))), label=f"{label} memory order")
    strided_dim = data.draw(st.sampled_from([None] + list(range(len(shape)))), label=f"{label} strided dim")
    stored = [shape[i] for i in order]
    if strided_dim is not None:
        stored[order.index(strided_dim)] *= 2
    t = torch.randn(stored, dtype=torch.float64).to(dtype=dtype, device=device)
    t = t.permute([order.index(i) for i in range(len(shape))])
    if strided_dim is not None:
        t = t[(slice(None),) * strided_dim + (slice(None, None, 2),)]
    return t


def _grads(fn, inputs, grad_out):
    inputs = [t.detach().requires_grad_() for t in inputs]
    out = fn(*inputs)
    return (out, *torch.autograd.grad(out, inputs, grad_out.to(out.dtype)))


def _assert_all_close(got, want, dtype):
    for g, w in zip(got, want):
        assert g.dtype == w.dtype
        assert_close(g, w, dtype)


draw_device = st.sampled_from(DEVICES)
draw_dtype = st.sampled_from(FLOAT_DTYPES)


@SETTINGS
@given(
    shape=st.lists(st.integers(1, 5), min_size=1, max_size=4),
    dtype=draw_dtype,
    device=draw_device,
    kind=scalar_kinds,
    data=st.data(),
)
def test_pixel_norm(shape, dtype, device, kind, data):
    dim = data.draw(st.integers(-len(shape), len(shape) - 1), label="dim")
    eps = _as_scalar_type(data.draw(st.sampled_from([1e-8, 0.5])), kind)
    torch.manual_seed(data.draw(st.integers(0, 2**31 - 1), label="seed"))
    x = _random_tensor(data, shape, dtype, device)
    grad_out = torch.randn(shape, dtype=dtype, device=device)
    got = _grads(lambda t: gan_kernels.pixel_norm(t, dim, eps), [x], grad_out)
    want = _grads(lambda t: reference.pixel_norm(t, dim, float(eps)), [x], grad_out)
    _assert_all_close(got, want, dtype)


@SETTINGS
@given(
    shape=st.lists(st.integers(1, 5), min_size=1, max_size=4),
    dtype=draw_dtype,
    device=draw_device,
    kind=scalar_kinds,
    act=st.sampled_from(list(reference.BIAS_ACT_ACTIVATIONS)),
    data=st.data(),
)
def test_bias_act(shape, dtype, device, kind, act, data):
    dim = data.draw(st.integers(-len(shape), len(shape) - 1), label="dim")
    clamp = data.draw(st.sampled_from([None, 0.7, 3.0]), label="clamp")
    gain = data.draw(st.sampled_from([None, 0.5, 2.0]), label="gain")
    scale = data.draw(st.sampled_from([1.0, 1.3]), label="scale")
    kwargs = dict(dim=dim, act=act, clamp=clamp, gain=gain, scale=scale)
    given_kwargs = {k: _as_scalar_type(v, kind) if isinstance(v, float) else v for k, v in kwargs.items()}
    # The reference gets the value the user's form holds (np.float32(1.3) is not 1.3).
    kwargs = {k: float(v) if k in ("clamp", "gain", "scale") and v is not None else v for k, v in given_kwargs.items()}
    torch.manual_seed(data.draw(st.integers(0, 2**31 - 1), label="seed"))
    x = _random_tensor(data, shape, dtype, device)
    b = torch.randn(shape[dim], dtype=dtype, device=device)
    grad_out = torch.randn(shape, dtype=dtype, device=device)
    got = _grads(lambda t, c: gan_kernels.bias_act(t, c, **given_kwargs), [x, b], grad_out)
    want = _grads(lambda t, c: reference.bias_act(t, c, **kwargs), [x, b], grad_out)
    # dL/db sums many rounded terms: compare it exactly only where rounding cannot reach the tolerance.
    _assert_all_close(got[:2], want[:2], dtype)
    if dtype == torch.float64:
        assert_close(got[2], want[2])


@SETTINGS
@given(
    groups=st.integers(1, 3),
    group_size=st.sampled_from([1, 2, 4, 8]),
    features=st.integers(1, 3),
    channels_per_feature=st.integers(1, 3),
    h=st.integers(1, 4),
    w=st.integers(1, 4),
    dtype=draw_dtype,
    device=draw_device,
    kind=int_kinds,
    data=st.data(),
)
def test_minibatch_std(groups, group_size, features, channels_per_feature, h, w, dtype, device, kind, data):
    shape = (groups * group_size, features * channels_per_feature, h, w)
    torch.manual_seed(data.draw(st.integers(0, 2**31 - 1), label="seed"))
    x = _random_tensor(data, shape, dtype, device)
    grad_out = torch.randn(shape[0], shape[1] + features, h, w, dtype=dtype, device=device)
    g, f = _as_int_type(group_size, kind), _as_int_type(features, kind)
    got = _grads(lambda t: gan_kernels.minibatch_std(t, g, f), [x], grad_out)
    want = _grads(lambda t: reference.minibatch_std(t, group_size, features), [x], grad_out)
    _assert_all_close(got, want, dtype)


@SETTINGS
@given(
    samples=st.integers(1, 9),
    kernels=st.integers(1, 4),
    dims=st.integers(1, 10),
    dtype=draw_dtype,
    device=draw_device,
    data=st.data(),
)
def test_minibatch_discrimination(samples, kernels, dims, dtype, device, data):
    torch.manual_seed(data.draw(st.integers(0, 2**31 - 1), label="seed"))
    m = _random_tensor(data, (samples, kernels, dims), dtype, device) / dims  # pairs at L1 distance ~1
    grad_out = torch.randn(samples, kernels, dtype=dtype, device=device)
    got = _grads(gan_kernels.minibatch_discrimination, [m], grad_out)
    want = _grads(reference.minibatch_discrimination, [m], grad_out)
    _assert_all_close(got, want, dtype)


@SETTINGS
@given(
    shape=st.lists(st.integers(1, 6), min_size=1, max_size=4),
    dtype=draw_dtype,
    device=draw_device,
    kind=scalar_kinds,
    center=st.sampled_from([0.0, 1.0, 2.5]),
    data=st.data(),
)
def test_per_sample_penalty(shape, dtype, device, kind, center, data):
    torch.manual_seed(data.draw(st.integers(0, 2**31 - 1), label="seed"))
    g = _random_tensor(data, shape, dtype, device)
    grad_out = torch.randn(shape[0], dtype=torch.float64, device=device)
    got = _grads(lambda t: gan_kernels.per_sample_penalty(t, _as_scalar_type(center, kind)), [g], grad_out)
    want = _grads(lambda t: reference.per_sample_penalty(t, center), [g], grad_out)
    _assert_all_close(got, want, dtype)


@SETTINGS
@given(
    shapes=st.lists(st.lists(st.integers(1, 5), min_size=2, max_size=4), min_size=1, max_size=4),
    dtype=st.sampled_from([torch.float64, torch.float32]),
    device=draw_device,
    kind=scalar_kinds,
    steps=st.integers(0, 3),
    data=st.data(),
)
def test_spectral_norm(shapes, dtype, device, kind, steps, data):
    torch.manual_seed(data.draw(st.integers(0, 2**31 - 1), label="seed"))
    weights = [_random_tensor(data, shape, dtype, device, f"weights[{i}]") for i, shape in enumerate(shapes)]
    dims = [data.draw(st.integers(0, len(shape) - 1), label=f"dims[{i}]") for i, shape in enumerate(shapes)]
    us, vs = [], []
    for weight, dim in zip(weights, dims):
        rows = weight.shape[dim]
        us.append(torch.nn.functional.normalize(torch.randn(rows, dtype=dtype, device=device), dim=0))
        vs.append(torch.nn.functional.normalize(torch.randn(weight.numel() // rows, dtype=dtype, device=device), dim=0))
    us_ref, vs_ref = [u.clone() for u in us], [v.clone() for v in vs]
    eps = _as_scalar_type(1e-12, kind)
    sigmas = gan_kernels.spectral_norm_power_iteration_(weights, us, vs, dims, steps, eps)
    sigmas_ref = reference.spectral_norm_power_iteration_(weights, us_ref, vs_ref, dims, steps, 1e-12)
    assert_close(sigmas, sigmas_ref, dtype)
    for got, want in zip(us + vs, us_ref + vs_ref):
        assert_close(got, want, dtype)
    # Given the sigmas just checked, the normalisation is W / sigma. (Against the reference's own sigma a
    # sigma near 0, which steps=0 with random u, v can give by cancellation, would amplify the sigmas'
    # rounding difference by 1/sigma.)
    normalized = gan_kernels.spectral_norm_normalize(weights, us, vs, sigmas, dims)
    for got, weight, sigma in zip(normalized, weights, sigmas):
        assert_close(got, weight / sigma, dtype)
