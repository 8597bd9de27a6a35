"""Spectral normalisation: the layer against PyTorch's, batching, and what only the batched ops promise.
The contracts every op keeps (gradcheck, opcheck, a penalty through it, compile, bad inputs) run
in test_contracts.py."""

import collections
import copy
import io
import sys
import threading

import numpy as np
import pytest
import torch
from helpers import (
    DEVICES,
    FLOAT_DTYPES,
    OPS_REGISTERED,
    SPECTRAL_SHAPES,
    assert_close,
    assert_same_bits,
    normalised_weights,
    on_thread_counts,
    random_spectral_layers,
    requires_ops,
    unregistered_autograd_is_an_error,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm as torch_spectral_norm

import gan_kernels
from gan_kernels import _backend, reference
from gan_kernels.nn import batch_spectral_norm, spectral_norm, spectral_sigmas
from gan_kernels.ops.spectral_norm import spectral_norm_one_

power_op = torch.ops.gan_kernels.spectral_norm_power_iteration_.default if OPS_REGISTERED else None
normalize_op = torch.ops.gan_kernels.spectral_norm_normalize.default if OPS_REGISTERED else None
normalize_backward_op = torch.ops.gan_kernels.spectral_norm_normalize_backward.default if OPS_REGISTERED else None

LAYERS = {
    "linear": (lambda: torch.nn.Linear(7, 5), (3, 7)),
    "conv1d": (lambda: torch.nn.Conv1d(3, 4, 3), (2, 3, 6)),
    "conv2d": (lambda: torch.nn.Conv2d(3, 6, 3), (2, 3, 5, 5)),
    "conv3d": (lambda: torch.nn.Conv3d(2, 3, 2), (2, 2, 3, 3, 3)),
    "conv_transpose2d": (lambda: torch.nn.ConvTranspose2d(4, 6, 3), (2, 4, 3, 3)),
    "embedding": (lambda: torch.nn.Embedding(10, 4), None),
}
# Ours vs PyTorch: the same formulas, with matrix-vector products summed in another order.
VS_TORCH = {torch.float64: dict(rtol=1e-10, atol=1e-12), torch.float32: dict(rtol=2e-5, atol=2e-6)}


def assert_close_to_torch(got, want):
    """Elementwise for float64; for float32 relative to the tensor's largest entry, because the
    weight gradient (G - <G, W_sn> u v^T) / sigma cancels in some entries, where a few float32
    ulps of summation-order difference are large relative to the entry itself. Complex as its parts."""
    if want.dtype in (torch.float64, torch.complex128):
        torch.testing.assert_close(got, want, **VS_TORCH[torch.float64])
    else:
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5 * float(want.detach().abs().max()))


def layer_input(kind, dtype, device):
    shape = LAYERS[kind][1]
    if shape is None:
        return torch.randint(0, 10, (3, 5), device=device)
    return torch.randn(shape, dtype=dtype, device=device)


def pair(kind, dtype, device, **kwargs):
    """The same layer normalised by PyTorch and by us, from the same seed (so the same u, v draws)."""
    make = LAYERS[kind][0]
    torch.manual_seed(0)
    ours = spectral_norm(make().to(device, dtype), **kwargs)
    torch.manual_seed(0)
    theirs = torch_spectral_norm(make().to(device, dtype), **kwargs)
    return ours, theirs


def buffers(module):
    return module.parametrizations.weight[0]._u, module.parametrizations.weight[0]._v


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("kind", list(LAYERS))
def test_matches_pytorch_over_training_steps_then_eval(device, dtype, kind):
    ours, theirs = pair(kind, dtype, device)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    for module in (ours, theirs):
        module.optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
    for step in range(4):
        if step == 3:
            ours.eval()
            theirs.eval()
        x = layer_input(kind, dtype, device)
        outputs = []
        for module in (ours, theirs):
            module.optimizer.zero_grad()
            y = module(x)
            y.square().sum().backward()
            module.optimizer.step()
            outputs.append((y, module.parametrizations.weight.original.grad, *buffers(module)))
        for got, want in zip(*outputs):
            assert_close_to_torch(got, want)


def test_conv_transpose_normalises_dim_1_and_sigma_is_the_spectral_norm():
    torch.manual_seed(1)
    layer = spectral_norm(torch.nn.ConvTranspose2d(4, 6, 3).double(), n_power_iterations=50)
    assert layer.parametrizations.weight[0].dim == 1
    layer.weight  # one more forward: 50 more iterations
    matrix = reference.spectral_weight_matrix(layer.parametrizations.weight.original.detach(), 1)
    sigma = spectral_sigmas(layer)["weight"]
    assert_close(sigma, torch.linalg.matrix_norm(matrix, 2))
    assert_close(
        torch.linalg.matrix_norm(reference.spectral_weight_matrix(layer.weight.detach(), 1), 2),
        torch.tensor(1.0, dtype=torch.float64),
    )


def test_one_dimensional_weight_is_normalised_as_pytorch_does():
    torch.manual_seed(2)
    ours = spectral_norm(torch.nn.Linear(4, 3), name="bias")
    theirs = torch_spectral_norm(copy.deepcopy(torch.nn.Linear(4, 3)), name="bias")
    theirs.parametrizations.bias.original.data.copy_(ours.parametrizations.bias.original)
    torch.testing.assert_close(ours.bias, theirs.bias)
    assert list(ours.state_dict()) == list(theirs.state_dict())


@pytest.mark.parametrize("kind", ["conv2d", "conv_transpose2d"])
def test_checkpoints_load_both_ways(kind):
    ours, theirs = pair(kind, torch.float32, "cpu")
    for _ in range(2):  # move u, v away from the registration values
        ours.weight
        theirs.weight
    x = layer_input(kind, torch.float32, "cpu")
    # PyTorch's checkpoint into ours
    fresh_ours = spectral_norm(LAYERS[kind][0]())
    fresh_ours.load_state_dict(theirs.state_dict())
    fresh_ours.eval(), theirs.eval()
    torch.testing.assert_close(fresh_ours(x), theirs(x), **VS_TORCH[torch.float32])
    # ours into PyTorch's
    fresh_theirs = torch_spectral_norm(LAYERS[kind][0]()).eval()
    fresh_theirs.load_state_dict(ours.state_dict())
    ours.eval()
    torch.testing.assert_close(ours(x), fresh_theirs(x), **VS_TORCH[torch.float32])


def test_loads_checkpoints_of_the_older_spectral_norm():
    torch.manual_seed(3)
    old = torch.nn.Sequential(
        torch.nn.utils.spectral_norm(torch.nn.Conv2d(3, 5, 3)),
        torch.nn.Flatten(),
        torch.nn.utils.spectral_norm(torch.nn.Linear(5 * 9, 1)),
    )
    x = torch.randn(2, 3, 5, 5)
    for _ in range(3):
        old(x)
    old.eval()
    ours = torch.nn.Sequential(
        spectral_norm(torch.nn.Conv2d(3, 5, 3)), torch.nn.Flatten(), spectral_norm(torch.nn.Linear(5 * 9, 1))
    ).eval()
    assert "0.weight_orig" in old.state_dict()
    ours.load_state_dict(old.state_dict())
    assert torch.equal(ours[0].parametrizations.weight[0]._u, old[0].weight_u)
    assert torch.equal(ours[0].parametrizations.weight.original, old[0].weight_orig)
    torch.testing.assert_close(ours(x), old(x), **VS_TORCH[torch.float32])


def test_remove_parametrizations_keeps_the_normalised_weight():
    ours, theirs = pair("conv2d", torch.float64, "cpu")
    ours.eval(), theirs.eval()
    expected = theirs.weight.detach()
    parametrize.remove_parametrizations(ours, "weight")
    assert isinstance(ours.weight, torch.nn.Parameter) and not parametrize.is_parametrized(ours)
    torch.testing.assert_close(ours.weight.detach(), expected, **VS_TORCH[torch.float64])
    spectral_norm(ours)  # can be normalised again after removal


def test_a_layer_with_its_spectral_norm_removed_is_torchs_plain_layer_again():
    """It pickles (torch.save of the whole model) and loads an older spectral norm's checkpoint as a
    plain torch.nn.Linear does, also one from before PyTorch 1.1 (keys unexpected, no rename)."""
    ours = spectral_norm(torch.nn.Linear(5, 4))
    parametrize.remove_parametrizations(ours, "weight")
    buffer = io.BytesIO()
    torch.save(ours, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert torch.equal(loaded.weight, ours.weight) and torch.equal(loaded.bias, ours.bias)

    old = torch.nn.utils.spectral_norm(torch.nn.Linear(5, 4))
    old(torch.randn(2, 5))
    before_1_1 = {key: value for key, value in old.state_dict().items() if key != "weight_v"}
    before_1_1["weight"] = old.weight.detach().clone()
    for checkpoint in (old.state_dict(), before_1_1):
        plain = torch.nn.Linear(5, 4).load_state_dict(dict(checkpoint), strict=False)
        assert ours.load_state_dict(dict(checkpoint), strict=False) == plain


def test_power_iteration_runs_in_float32_under_autocast():
    torch.manual_seed(4)
    layer = spectral_norm(torch.nn.Linear(16, 8))
    twin = copy.deepcopy(layer)
    x = torch.randn(4, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        w = layer.weight
        layer(x)
    twin.weight
    u, v = buffers(layer)
    assert u.dtype == torch.float32 and w.dtype == torch.float32
    # the second access in autocast and one more outside give the same u, v as two in float32
    twin.weight
    torch.testing.assert_close(u, buffers(twin)[0], rtol=0, atol=0)
    torch.testing.assert_close(v, buffers(twin)[1], rtol=0, atol=0)


class SNDiscriminator(torch.nn.Module):
    """A small SNGAN-like D: conv, transposed conv, conv, linear head with one output."""

    def __init__(self, normalise):
        super().__init__()
        self.c1 = normalise(torch.nn.Conv2d(3, 8, 3, padding=1))
        self.c2 = normalise(torch.nn.ConvTranspose2d(8, 6, 3, padding=1))
        self.c3 = normalise(torch.nn.Conv2d(6, 8, 4, stride=2, padding=1))
        self.head = normalise(torch.nn.Linear(8 * 4 * 4, 1))

    def forward(self, x):
        h = x
        for conv in (self.c1, self.c2, self.c3):
            h = torch.nn.functional.leaky_relu(conv(h), 0.1)
        return self.head(h.flatten(1))


def make_d(normalise, dtype=torch.float64, device="cpu"):
    torch.manual_seed(5)
    # Registered in the final dtype: the 15 warm-up iterations are part of what we compare.
    return SNDiscriminator(lambda layer: normalise(layer.to(device, dtype)))


def wgan_gp_step(d, real, fake, eps):
    """One WGAN-GP critic step: D(fake) - D(real) + 10 * GP on interpolates; returns loss and grads."""
    x_hat = (eps * real + (1 - eps) * fake).requires_grad_()
    (g,) = torch.autograd.grad(d(x_hat).sum(), x_hat, create_graph=True)
    penalty = 10 * (g.flatten(1).norm(dim=1) - 1).square().mean()
    loss = d(fake).mean() - d(real).mean() + penalty
    params = [p for _, p in sorted(d.named_parameters())]
    return loss, torch.autograd.grad(loss, params)


@pytest.mark.parametrize("device", DEVICES)
def test_wgan_gp_step_matches_pytorch(device):
    theirs = make_d(torch_spectral_norm, device=device)
    ours = make_d(spectral_norm, device=device)
    batched = make_d(spectral_norm, device=device)
    batch_spectral_norm(batched)
    torch.manual_seed(6)
    real, fake = (torch.randn(4, 3, 8, 8, dtype=torch.float64, device=device) for _ in range(2))
    eps = torch.rand(4, 1, 1, 1, dtype=torch.float64, device=device)
    with unregistered_autograd_is_an_error():
        loss_ours, grads_ours = wgan_gp_step(ours, real, fake, eps)
        loss_batched, grads_batched = wgan_gp_step(batched, real, fake, eps)
    loss_theirs, grads_theirs = wgan_gp_step(theirs, real, fake, eps)
    torch.testing.assert_close(loss_ours, loss_theirs, **VS_TORCH[torch.float64])
    assert sum(want.abs().sum() for want in grads_theirs) > 0
    for got, batched_got, want in zip(grads_ours, grads_batched, grads_theirs):
        torch.testing.assert_close(got, want, **VS_TORCH[torch.float64])
        assert_identical(batched_got, got)


def assert_identical(got, want):
    """Bitwise with our kernels: a layer's arithmetic does not depend on the rest of the batch. The
    reference's BLAS matrix-vector products may round differently on the batched path's snapshot
    views (other alignment), so there only to the last bits."""
    if _backend.compiled_available():
        assert torch.equal(got, want)
    else:
        assert_close(got, want)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_batched_equals_per_layer_exactly(device, dtype):
    per_layer = make_d(spectral_norm, dtype, device)
    batched = make_d(spectral_norm, dtype, device)
    group = batch_spectral_norm(batched)
    optimizers = [torch.optim.SGD(d.parameters(), lr=0.05) for d in (per_layer, batched)]
    torch.manual_seed(7)
    for step in range(3):
        real, fake = (torch.randn(3, 3, 8, 8, dtype=dtype, device=device) for _ in range(2))
        results = []
        for d, opt in zip((per_layer, batched), optimizers):
            opt.zero_grad()
            out_real, out_fake = d(real), d(fake)  # two forwards, one backward
            (out_real - out_fake).mean().backward()
            opt.step()
            state = [t.clone() for t in d.state_dict().values()]
            sigmas = list(spectral_sigmas(d).values())
            results.append([out_real, out_fake, *state, *sigmas])
        for got, want in zip(results[1], results[0]):
            assert_identical(got, want)
    per_layer.eval(), batched.eval()
    x = torch.randn(2, 3, 8, 8, dtype=dtype, device=device)
    assert_identical(batched(x), per_layer(x))
    group.remove()
    assert_identical(batched(x), per_layer(x))


def test_batched_runs_one_power_iteration_per_forward():
    if not (_backend.compiled_available()):
        pytest.skip("counts calls of the compiled ops")
    d = make_d(spectral_norm)
    batch_spectral_norm(d)
    with torch.autograd.profiler.profile() as prof:
        d(torch.randn(2, 3, 8, 8, dtype=torch.float64))
    names = [e.name for e in prof.function_events]
    assert names.count("gan_kernels::spectral_norm_power_iteration_") == 1
    assert names.count("gan_kernels::spectral_norm_normalize") == 1


@requires_ops
@pytest.mark.skipif(_backend.IMPL == "reference", reason="GAN_KERNELS_IMPL=reference routes to the reference")
def test_per_layer_path_is_one_call_of_each_single_weight_op_with_cpp_autograd():
    """Issue 15: a layer's forward and backward cross no list op and no Python autograd function
    (each costs more than a small layer's whole spectral norm in PyTorch)."""
    layer = spectral_norm(torch.nn.Conv2d(3, 4, 3))
    with torch.autograd.profiler.profile() as prof:
        weight = layer.weight
        weight.sum().backward()
    ours = collections.Counter(e.name for e in prof.function_events if e.name.startswith("gan_kernels::"))
    assert ours == {
        "gan_kernels::spectral_norm_power_iteration_one_": 1,
        "gan_kernels::spectral_norm_normalize_one": 1,
        "gan_kernels::spectral_norm_normalize_one_backward": 1,
    }
    # A Python autograd function's node is named after its class in Python (e.g. "BackwardCFunction").
    assert "NormalizeOne" in weight.grad_fn.name()


@requires_ops
@pytest.mark.skipif(_backend.IMPL == "reference", reason="GAN_KERNELS_IMPL=reference routes to the reference")
@pytest.mark.parametrize("shape, dim", [((640, 500), 0), ((151, 80, 5, 5), 1)])
def test_a_large_layer_gives_the_same_bits_on_one_and_two_threads_and_in_a_batch(shape, dim):
    """Alone, a layer this large splits its passes over threads (rows of W v, columns of W^T u, here
    inside a block of dim 1 too, elements of W / sigma and of its backward); in a batch it is one
    thread's task. One thread, two threads and the batch must give the same bits."""
    ops = torch.ops.gan_kernels
    torch.manual_seed(21)
    (weight, small), (u0, u_small), (v0, v_small), (_, dim_small) = random_spectral_layers(
        torch.float32, "cpu", [(shape, dim), ((5, 7), 0)]
    )
    grad = torch.randn_like(weight)

    def alone():
        u, v = u0.clone(), v0.clone()
        sigma = ops.spectral_norm_power_iteration_one_(weight, u, v, dim, 2, 1e-12)
        normalized = ops.spectral_norm_normalize_one(weight, u, v, sigma, dim)
        return u, v, sigma, normalized, ops.spectral_norm_normalize_one_backward(grad, weight, u, v, sigma, dim)

    def batched():
        us, vs, dims = [u0.clone(), u_small.clone()], [v0.clone(), v_small.clone()], [dim, dim_small]
        sigmas = ops.spectral_norm_power_iteration_([weight, small], us, vs, dims, 2, 1e-12)
        normalized = ops.spectral_norm_normalize([weight, small], us, vs, sigmas, dims)[0]
        grads = ops.spectral_norm_normalize_backward(
            [grad, torch.ones_like(small)], [weight, small], us, vs, sigmas, dims
        )
        return us[0], vs[0], sigmas[0], normalized, grads[0]

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one_thread = alone()
        torch.set_num_threads(2)
        two_threads = alone()
        in_a_batch = batched()
    finally:
        torch.set_num_threads(threads)
    for got, want in zip(two_threads + in_a_batch, one_thread + one_thread):
        assert torch.equal(got, want)
    sigma_ref = reference.spectral_norm_power_iteration_(
        [weight.double()], [u0.double()], [v0.double()], [dim], 2, 1e-12
    )
    torch.testing.assert_close(one_thread[2].double(), sigma_ref[0], rtol=1e-5, atol=0)


@requires_ops
@pytest.mark.skipif(_backend.IMPL == "reference", reason="GAN_KERNELS_IMPL=reference routes to the reference")
@pytest.mark.parametrize("batched", [False, True], ids=["one", "batch"])
def test_double_backward_gives_the_same_bits_on_any_thread_count(batched):
    """The backward's backward (the WGAN-GP / R1 step through a spectral-normalised layer) ran in aten
    ops whose sums over a whole weight (torch's sum, MKL's mv and dot) split it by the thread count:
    its last bits changed between 1, 2 and 3 threads for every weight of 32K elements or more."""
    torch.manual_seed(22)
    (weight,), (u0,), (v0,), (dim,) = random_spectral_layers(torch.float32, "cpu", [((128, 64, 3, 3), 0)])
    up, w2 = torch.randn_like(weight), torch.randn_like(weight)

    def second_order():
        w = weight.clone().requires_grad_()
        u, v = u0.clone(), v0.clone()
        if batched:
            sigmas = gan_kernels.ops.spectral_norm_power_iteration_([weight], [u], [v], [dim], 1, 1e-12)
            out = gan_kernels.ops.spectral_norm_normalize([w], [u], [v], sigmas, [dim])[0]
        else:
            out, _ = spectral_norm_one_(w, u, v, dim, 1, 1e-12)
        (g,) = torch.autograd.grad(out, w, up, create_graph=True)
        return [out.detach(), g.detach(), torch.autograd.grad(g, w, w2)[0]]

    assert_same_bits(on_thread_counts(second_order))


def test_sigma_is_readable_after_each_forward():
    d = make_d(spectral_norm)
    d(torch.randn(2, 3, 8, 8, dtype=torch.float64))
    sigmas = spectral_sigmas(d)
    assert set(sigmas) == {"c1.weight", "c2.weight", "c3.weight", "head.weight"}
    sn = d.c1.parametrizations.weight[0]
    u, v = sn._u, sn._v
    matrix = reference.spectral_weight_matrix(d.c1.parametrizations.weight.original.detach(), 0)
    assert_close(sigmas["c1.weight"], torch.vdot(u, matrix @ v))
    assert not sigmas["c1.weight"].requires_grad


@pytest.mark.parametrize("batched", [False, True])
def test_parametrize_cached_iterates_once_as_pytorch_does(batched):
    """Inside parametrize.cached() a weight is normalised at its first access only, so three model
    calls run one power iteration with PyTorch's layers; the group iterated (and normalised) all
    its layers again on every call, and u, v drifted from PyTorch's."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    ours, theirs = make_d(spectral_norm), make_d(torch_spectral_norm)
    if batched:
        batch_spectral_norm(ours)
    with parametrize.cached():
        outputs = [(ours(x), theirs(x)) for _ in range(3)]
    for got, want in outputs:
        assert_close_to_torch(got, want)
    for key, want in theirs.state_dict().items():
        assert_close_to_torch(ours.state_dict()[key], want)
    assert_close_to_torch(ours(x), theirs(x))  # the cache is gone: each iterates again


class ReusingDiscriminator(torch.nn.Module):
    """A layer applied twice per forward (shared block), and a head used only when asked for."""

    def __init__(self, normalise):
        super().__init__()
        self.block = normalise(torch.nn.Linear(6, 6))
        self.head = normalise(torch.nn.Linear(6, 1))
        self.aux = normalise(torch.nn.Linear(6, 3))

    def forward(self, x, aux=False):
        h = torch.tanh(self.block(torch.tanh(self.block(x))))
        return self.head(h) + (self.aux(h).sum(1, keepdim=True) if aux else 0)


@pytest.mark.parametrize("aux_every", [1, 2])
def test_batched_matches_pytorch_when_a_layer_runs_twice_or_not_at_all(aux_every):
    """PyTorch iterates a layer at each use: twice when a forward applies it twice, not at all when
    the forward skips it. The group iterated every layer once per forward: the reused block kept one
    sigma for both uses, and the skipped head's u, v advanced on forwards that never used it."""
    models = []
    for normalise in (torch_spectral_norm, spectral_norm, spectral_norm):
        torch.manual_seed(5)
        models.append(ReusingDiscriminator(lambda layer: normalise(layer.double())))
    theirs, per_layer, batched = models
    batch_spectral_norm(batched)
    torch.manual_seed(0)
    for step in range(4):
        x = torch.randn(3, 6, dtype=torch.float64)
        outs = [d(x, aux=step % aux_every == 0) for d in models]
        grads = [
            torch.autograd.grad(out.sum(), [p for _, p in sorted(d.named_parameters())], allow_unused=True)
            for out, d in zip(outs, models)
        ]
        assert_close_to_torch(outs[1], outs[0])
        assert_identical(outs[2], outs[1])
        for want, got, got_batched in zip(*grads):
            if want is None:  # the skipped aux layer
                assert got is None and got_batched is None
                continue
            assert_close_to_torch(got, want)
            assert_identical(got_batched, got)
        for key, want in theirs.state_dict().items():
            assert_close_to_torch(per_layer.state_dict()[key], want)
            assert_identical(batched.state_dict()[key], per_layer.state_dict()[key])
        sigmas, sigmas_per_layer = spectral_sigmas(batched), spectral_sigmas(per_layer)
        assert sigmas.keys() == sigmas_per_layer.keys()
        for key, sigma in sigmas.items():
            assert_identical(sigma, sigmas_per_layer[key])


def test_batched_leaves_a_skipped_layers_weight_alone_under_adam_and_a_penalty():
    """A layer the forward skips gets no gradient from the group, as from PyTorch's layers. The
    group's one normalisation op gave it zeros, so Adam's momentum from earlier steps kept moving it.
    Also through an R1-style penalty (double backward)."""
    models = []
    for normalise in (torch_spectral_norm, spectral_norm):
        torch.manual_seed(5)
        models.append(ReusingDiscriminator(lambda layer: normalise(layer.double())))
    theirs, batched = models
    batch_spectral_norm(batched)
    optimizers = [torch.optim.Adam(d.parameters(), lr=0.1, betas=(0.9, 0.99)) for d in models]
    torch.manual_seed(0)
    for step in range(3):
        x = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
        for d, optimizer in zip(models, optimizers):
            optimizer.zero_grad()
            out = d(x, aux=step == 0)
            (grad_x,) = torch.autograd.grad(out.sum(), x, create_graph=True)
            (out.sum() + grad_x.square().sum()).backward()
            optimizer.step()
        aux_weights = [d.aux.parametrizations.weight.original for d in models]
        if step > 0:
            assert aux_weights[0].grad is None and aux_weights[1].grad is None
        assert_close_to_torch(aux_weights[1], aux_weights[0])
        for (name, got), want in zip(
            sorted(batched.named_parameters()), [p for _, p in sorted(theirs.named_parameters())]
        ):
            assert_close_to_torch(got, want)


def test_batched_frozen_layers_stay_out_of_the_graph_as_per_layer():
    """FreezeD-style training (D's first layers frozen with requires_grad_(False)): a frozen layer's
    output needs no gradient, as with PyTorch's layers. Normalised in one op call with the trainable
    layers, its W / sigma shared their autograd node, so the frozen layers' outputs required grad
    and every backward computed and dropped their weight gradients."""
    theirs, batched = make_d(torch_spectral_norm), make_d(spectral_norm)
    batch_spectral_norm(batched)
    needs_grad = {}
    for d in (theirs, batched):
        for layer in (d.c1, d.c2):
            layer.requires_grad_(False)
        d.c2.register_forward_hook(lambda layer, args, out, d=d: needs_grad.__setitem__(d, out.requires_grad))
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    outs = [d(x) for d in (theirs, batched)]
    assert needs_grad[batched] is needs_grad[theirs] is False
    for d, out in zip((theirs, batched), outs):
        out.sum().backward()
    assert_close_to_torch(outs[1], outs[0])
    for layer in ("c3", "head"):
        assert_close_to_torch(
            getattr(batched, layer).parametrizations.weight.original.grad,
            getattr(theirs, layer).parametrizations.weight.original.grad,
        )


@pytest.mark.parametrize("grouping", ["twice", "nested"])
def test_a_layer_in_two_groups_iterates_once_per_forward(grouping):
    """batch_spectral_norm twice on one model, or on a model and on a model that contains it: each
    group's pre-hook iterated every layer, so u, v took two steps per forward instead of one."""
    per_layer, grouped = make_d(spectral_norm), make_d(spectral_norm)
    outer = torch.nn.Sequential(grouped)
    batch_spectral_norm(grouped)
    batch_spectral_norm(grouped if grouping == "twice" else outer)
    torch.manual_seed(0)
    for _ in range(3):
        x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
        assert_identical(outer(x), per_layer(x))
        for got, want in zip(grouped.state_dict().values(), per_layer.state_dict().values()):
            assert_identical(got, want)


def test_grouped_model_can_be_deep_copied():
    d = make_d(spectral_norm)
    batch_spectral_norm(d)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    d(x)
    twin = copy.deepcopy(d)
    assert_identical(twin(x), d(x))  # both iterate once more from the same u, v


@pytest.mark.parametrize("training", [False, True])
def test_batched_group_serves_concurrent_forwards_on_threads(training):
    """Four threads run forward + backward through one grouped model at once: each must use the
    W / sigma of its own forward (another thread's graph is freed by that thread's backward)."""
    d = make_d(spectral_norm)
    batch_spectral_norm(d)
    d.train(training)
    params = [p for _, p in sorted(d.named_parameters())]
    torch.manual_seed(15)
    inputs = [torch.randn(2, 3, 8, 8, dtype=torch.float64) for _ in range(4)]
    # In eval u, v stay put, so each input's gradients are fixed numbers to compare with.
    expected = [torch.autograd.grad(d(x).sum(), params) for x in inputs]
    start = threading.Barrier(len(inputs))
    results, errors = [None] * len(inputs), []

    def train(index):
        try:
            start.wait()
            for _ in range(20):
                results[index] = torch.autograd.grad(d(inputs[index]).sum(), params)
        except Exception as error:  # noqa: BLE001 - re-raised below, in the test's thread
            errors.append(error)

    threads = [threading.Thread(target=train, args=(index,)) for index in range(len(inputs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    if not training:
        for got, want in zip(results, expected):
            for g, w in zip(got, want):
                assert_close(g, w)


def cpu_replicas(model, count, monkeypatch):
    """torch.nn.parallel.replicate (what DataParallel runs each forward) on the CPU: its broadcast
    copies the tensors, replica 0 sharing the model's buffers and (through views) its parameters,
    as CUDA's broadcast does on the source device."""
    replicate_module = __import__("torch.nn.parallel.replicate", fromlist=["replicate"])

    def broadcast(tensors, devices, detach=False):
        if not tensors:
            return []
        return [
            [
                (t if detach else t.view_as(t)) if j == 0 else (t.detach().clone() if detach else t.clone())
                for t in tensors
            ]
            for j in range(len(devices))
        ]

    monkeypatch.setattr(replicate_module, "_broadcast_coalesced_reshape", broadcast)
    return replicate_module.replicate(model, list(range(count)))


def test_grouped_model_replicated_as_data_parallel_does_iterates_each_replica_once(monkeypatch):
    """DataParallel's replicas share the model's hooks: each replica's forward must batch its own
    layers, not the original model's (which stepped the original's u, v once per replica, on top of
    replica 0's own step, and left each replica to its per-layer path)."""
    per_layer, grouped = make_d(spectral_norm), make_d(spectral_norm)
    batch_spectral_norm(grouped)
    torch.manual_seed(16)
    inputs = [torch.randn(2, 3, 8, 8, dtype=torch.float64) for _ in range(2)]
    for _ in range(2):
        want = [r(x) for r, x in zip(cpu_replicas(per_layer, 2, monkeypatch), inputs)]
        replicas = cpu_replicas(grouped, 2, monkeypatch)
        with unregistered_autograd_is_an_error():
            got = [r(x) for r, x in zip(replicas, inputs)]
        for g, w in zip(got, want):
            assert_identical(g, w)
        for g, w in zip(grouped.state_dict().values(), per_layer.state_dict().values()):
            assert_identical(g, w)

    # Each replica's layers were served by the batched results, none by the per-layer path.
    def per_layer_path(*args):
        pytest.fail("a replica's layer ran the per-layer path")

    monkeypatch.setattr(sys.modules["gan_kernels.nn.spectral_norm"], "spectral_norm_one_", per_layer_path)
    for r, x in zip(cpu_replicas(grouped, 2, monkeypatch), inputs):
        r(x)


# eps = 0 and eps < 0 too: PyTorch takes them (normalize then divides by the norm itself).
@pytest.mark.parametrize(
    "eps", [np.float64(1e-6), np.float32(1e-6), torch.tensor(1e-6, dtype=torch.float64), 0.0, -1e-3]
)
def test_layer_takes_numpy_scalars_and_0d_tensors_as_pytorch_does(eps):
    torch.manual_seed(20)
    ours = spectral_norm(torch.nn.Linear(7, 5), eps=eps, n_power_iterations=np.int64(2), dim=np.int64(0))
    torch.manual_seed(20)
    theirs = torch_spectral_norm(torch.nn.Linear(7, 5), eps=float(eps), n_power_iterations=2)
    assert type(ours.parametrizations.weight[0].eps) is float
    for got, want in zip((ours.weight, *buffers(ours)), (theirs.weight, *buffers(theirs))):
        assert_close_to_torch(got, want)


@pytest.mark.parametrize("in_features, out_features", [(5, 0), (0, 5)])
def test_empty_weight_as_pytorch(in_features, out_features):
    """Linear(5, 0) raised "vs[0] must have shape [5]": v's length was taken as numel / rows = 0 / 0."""
    torch.manual_seed(21)
    ours = spectral_norm(torch.nn.Linear(in_features, out_features))
    torch.manual_seed(21)
    theirs = torch_spectral_norm(torch.nn.Linear(in_features, out_features))
    x = torch.randn(3, in_features)
    for module in (ours, theirs):
        module.y = module(x)
        module.y.sum().backward()
    assert ours.weight.shape == theirs.weight.shape == (out_features, in_features)
    for got, want in zip(
        (ours.y, *buffers(ours), ours.parametrizations.weight.original.grad),
        (theirs.y, *buffers(theirs), theirs.parametrizations.weight.original.grad),
    ):
        assert torch.equal(got, want)  # empty, or only zeros and the bias: nothing to round


def assert_steps_then_eval_match_torch(ours, theirs, x, state):
    """Two training forwards and one in eval: outputs, weight gradients and ``state(module)`` equal
    PyTorch's, in the input's dtype."""
    for step in range(3):
        if step == 2:
            ours.eval(), theirs.eval()
        outputs = []
        for module in (ours, theirs):
            y = module(x)
            (grad,) = torch.autograd.grad(y.abs().square().sum(), module.parametrizations.weight.original)
            outputs.append((y, grad, *state(module)))
        for got, want in zip(*outputs):
            assert got.dtype == x.dtype
            assert_close_to_torch(got, want)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("batched", [False, True], ids=["per_layer", "batched"])
def test_channels_last_weight_stays_channels_last_as_pytorch(device, batched):
    """W / sigma of a channels_last weight came back contiguous (PyTorch's keeps the weight's order),
    so each forward copied the weight once more and conv2d converted W / sigma back."""

    def make(normalise):
        torch.manual_seed(26)
        layers = [torch.nn.Conv2d(3, 8, 3, dtype=torch.float64), torch.nn.Conv2d(8, 4, 1, dtype=torch.float64)]
        return torch.nn.Sequential(*map(normalise, layers)).to(device=device, memory_format=torch.channels_last)

    ours, theirs = make(spectral_norm), make(torch_spectral_norm)
    if batched:
        batch_spectral_norm(ours)
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64, device=device).contiguous(memory_format=torch.channels_last)
    for step in range(3):
        if step == 2:
            ours.eval(), theirs.eval()
        y, y_ref = ours(x), theirs(x)
        torch.testing.assert_close(y, y_ref)
        for got, want in zip(ours, theirs):
            w, w_ref = got.weight, want.weight  # in training, each read takes a power-iteration step
            assert w.is_contiguous(memory_format=torch.channels_last) and w.stride() == w_ref.stride()
            torch.testing.assert_close(w, w_ref)
        grads = torch.autograd.grad(y.square().sum(), [m.parametrizations.weight.original for m in ours])
        grads_ref = torch.autograd.grad(y_ref.square().sum(), [m.parametrizations.weight.original for m in theirs])
        for got, want in zip(grads, grads_ref):
            torch.testing.assert_close(got, want)


@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
def test_complex_weights_match_pytorch(dtype):
    torch.manual_seed(22)
    ours = spectral_norm(torch.nn.Conv2d(3, 4, 2, dtype=dtype))
    torch.manual_seed(22)
    theirs = torch_spectral_norm(torch.nn.Conv2d(3, 4, 2, dtype=dtype))
    x = torch.randn(2, 3, 4, 4, dtype=dtype)
    assert_steps_then_eval_match_torch(ours, theirs, x, buffers)


def test_applied_twice_to_one_weight_as_pytorch():
    def twice(normalise):
        torch.manual_seed(23)
        return normalise(normalise(torch.nn.Linear(7, 5).double()))

    ours, theirs = twice(spectral_norm), twice(torch_spectral_norm)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    x = torch.randn(3, 7, dtype=torch.float64)
    assert_steps_then_eval_match_torch(ours, theirs, x, lambda module: module.state_dict().values())


@pytest.mark.parametrize("make", [lambda: torch.nn.Conv2d(3, 5, 3), lambda: torch.nn.ConvTranspose2d(3, 5, 3)])
def test_loads_checkpoints_from_before_pytorch_1_1(make):
    """Those saved the normalised ``weight`` instead of ``weight_v``; PyTorch's own loader recomputes
    v from u and W so that the loaded layer gives the saved weight."""
    torch.manual_seed(24)
    old = torch.nn.utils.spectral_norm(make())
    x = torch.randn(2, 3, 5, 5)
    for _ in range(3):
        old(x)
    # As PyTorch < 1.1 saved it: no v, the normalised weight, no version in the metadata.
    pre_1_1 = collections.OrderedDict((key, t) for key, t in old.state_dict().items() if key != "weight_v")
    pre_1_1["weight"] = old.weight.detach().clone()
    theirs = torch.nn.utils.spectral_norm(make())
    theirs.load_state_dict(copy.deepcopy(pre_1_1))
    ours = spectral_norm(make())
    ours.load_state_dict(copy.deepcopy(pre_1_1))
    ours.eval(), theirs.eval()
    u, v = buffers(ours)
    assert torch.equal(u, pre_1_1["weight_u"])
    # v satisfies the invariant of a trained layer, u = normalize(W v) ...
    dim = ours.parametrizations.weight[0].dim
    assert_close(
        torch.nn.functional.normalize(reference.spectral_weight_matrix(pre_1_1["weight_orig"], dim) @ v, dim=0), u
    )
    # ... and gives the saved normalised weight, as PyTorch's loaded layer does. (PyTorch's own v is
    # not compared: its pinverse(W^T W) inverts the float32 rounding noise of W^T W's zero singular
    # values when W has fewer rows than columns.)
    assert_close(ours.weight, pre_1_1["weight"])
    assert_close(ours(x), theirs(x))


# ---- the ops -------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("eps", [1e-3, 0.0, -1e-3])
def test_eps_of_any_sign_as_pytorch_normalize(device, eps):
    """normalize(x) = x / max(||x||, eps): a zero layer gives u = v = 0 for eps > 0 and NaN (0 / 0)
    for eps <= 0, as torch.nn.functional.normalize; a nonzero layer ignores eps <= 0."""
    torch.manual_seed(9)
    weights = [torch.zeros(3, 4, device=device), torch.randn(5, 2, 3, device=device)]
    us = [torch.nn.functional.normalize(torch.randn(w.shape[0], device=device), dim=0) for w in weights]
    vs = [torch.nn.functional.normalize(torch.randn(w[0].numel(), device=device), dim=0) for w in weights]
    us_ref, vs_ref = [u.clone() for u in us], [v.clone() for v in vs]
    sigmas = gan_kernels.spectral_norm_power_iteration_(weights, us, vs, [0, 0], 2, eps)
    sigmas_ref = reference.spectral_norm_power_iteration_(weights, us_ref, vs_ref, [0, 0], 2, eps)
    assert sigmas[0].isnan().item() == (eps <= 0)
    torch.testing.assert_close(sigmas, sigmas_ref, equal_nan=True)
    for got, want in zip(us + vs, us_ref + vs_ref):
        torch.testing.assert_close(got, want, equal_nan=True)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("steps", [0, 1, 3])
def test_ops_match_reference(device, dtype, steps):
    """Ours in ``dtype`` (float accumulation) against the reference in float64 on the same values."""
    torch.manual_seed(8)
    weights, us, vs, dims = random_spectral_layers(dtype, device)

    def wide(ts):
        return [t.detach().double().clone() for t in ts]

    us_ref, vs_ref = wide(us), wide(vs)
    sigmas = gan_kernels.spectral_norm_power_iteration_(weights, us, vs, dims, steps, 1e-12)
    sigmas_ref = reference.spectral_norm_power_iteration_(wide(weights), us_ref, vs_ref, dims, steps, 1e-12)
    assert sigmas.dtype == dtype
    assert_close(sigmas, sigmas_ref.to(dtype))
    for got, want in zip(us + vs, us_ref + vs_ref):
        assert_close(got, want.to(dtype))
    leaves = [w.detach().requires_grad_() for w in weights]
    leaves_ref = [w.requires_grad_() for w in wide(weights)]
    out = gan_kernels.spectral_norm_normalize(leaves, us, vs, sigmas, dims)
    out_ref = reference.spectral_norm_normalize(leaves_ref, wide(us), wide(vs), dims)
    upstream = [torch.randn_like(w) for w in weights]
    grads = torch.autograd.grad(out, leaves, upstream)
    grads_ref = torch.autograd.grad(out_ref, leaves_ref, wide(upstream))
    for got, want in zip(out + list(grads), out_ref + list(grads_ref)):
        assert got.dtype == dtype
    for got, want in zip(out, out_ref):
        assert_close(got, want.to(dtype))
    for index, (got, want) in enumerate(zip(grads, grads_ref)):
        if dtype == torch.float32:
            assert_float32_gradient_within_error_bound(
                got, want, upstream[index], weights[index], us[index], vs[index], dims[index]
            )
        else:
            assert_close(got, want.to(dtype))


def assert_float32_gradient_within_error_bound(got, want, upstream, weight, u, v, dim):
    """The float32 weight gradient G / s - k u v^T (k = <G, W> / s^2, s = u . W v) against its float64
    value, entry by entry within the forward error bound of that formula. The two terms cancel in
    some entries, so a relative tolerance cannot hold there: the error follows the terms' size,
    A = |G| / |s| + |k|' |u| |v|^T with |k|' = sum |G * W| / s^2, not the result's. With unit roundoff
    e = 2^-24, gamma_n = n e / (1 - n e) (Higham, recursive summation of n terms) and to first order:
    s = u . (W v) is off by the relative delta <= gamma_{rows+cols} (|u| . |W| |v|) / |s|, which scales
    both terms (the second twice); k sums N = numel products, each of G * W / (s * s) (3 roundings);
    k u v^T takes 2 more, the subtraction and the rounding of the float64 value to float32 one each:
    |error| <= (gamma_{N+6} + 2 delta) A."""
    e = 2.0**-24

    def gamma(n):
        return n * e / (1 - n * e)

    # Entry by entry in the matrix view (dim first, the rest flattened), where u v^T is an outer product.
    g, w, got, want = (
        reference.spectral_weight_matrix(t.detach().double(), dim) for t in (upstream, weight, got, want)
    )
    u, v = u.double(), v.double()
    sigma = torch.vdot(u, w @ v)
    delta = gamma(sum(w.shape)) * float(u.abs() @ w.abs() @ v.abs() / sigma.abs())
    k_abs = float((g * w).abs().sum() / sigma.square())
    terms = g.abs() / sigma.abs() + k_abs * torch.outer(u.abs(), v.abs())
    bound = (gamma(w.numel() + 6) + 2 * delta) * terms
    error = (got - want).abs()
    assert bool((error <= bound).all()), f"error exceeds the bound by up to {float((error / bound).max())}x"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("batched", [False, True])
def test_gradcheck_through_a_layer_in_training_with_u_v_reset(device, batched):
    """As PyTorch's own test: every call iterates (training), from the same u, v."""
    torch.manual_seed(14)
    layer = spectral_norm(torch.nn.Conv2d(2, 3, 2).to(device, torch.float64))
    model = torch.nn.Sequential(layer)
    if batched:
        batch_spectral_norm(model)
    u0, v0 = (b.clone() for b in buffers(layer))

    def fn(x):
        buffers(layer)[0].copy_(u0)
        buffers(layer)[1].copy_(v0)
        return model(x)

    x = torch.randn(1, 2, 3, 3, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))


@pytest.mark.parametrize("device", DEVICES)
def test_forward_mode_ad_through_spectral_norm(device):
    torch.manual_seed(3)
    weights = [
        torch.randn(4, 3, 2, dtype=torch.float64, device=device),
        torch.randn(5, 6, dtype=torch.float64, device=device),
    ]
    us = [torch.nn.functional.normalize(torch.randn(w.shape[0], dtype=w.dtype, device=device), dim=0) for w in weights]
    vs = [
        torch.nn.functional.normalize(torch.randn(w[0].numel(), dtype=w.dtype, device=device), dim=0) for w in weights
    ]
    sigmas = torch.stack(
        [torch.vdot(u, reference.spectral_weight_matrix(w, 0) @ v) for w, u, v in zip(weights, us, vs)]
    )
    tangents = tuple(torch.randn_like(w) for w in weights)

    def ours(*w):
        return tuple(gan_kernels.spectral_norm_normalize(list(w), us, vs, sigmas, [0, 0]))

    def theirs(*w):
        return tuple(reference.spectral_norm_normalize(list(w), us, vs, [0, 0]))

    _, got = torch.func.jvp(ours, tuple(weights), tangents)
    _, want = torch.func.jvp(theirs, tuple(weights), tangents)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)
        assert g.abs().sum() > 0


def test_empty_list_and_non_contiguous_weight():
    assert gan_kernels.spectral_norm_power_iteration_([], [], [], [], 1, 1e-12).shape == (0,)
    assert gan_kernels.spectral_norm_normalize([], [], [], torch.empty(0), []) == []
    torch.manual_seed(13)
    w = torch.randn(4, 6, dtype=torch.float64).t()  # not contiguous
    u, v = torch.randn(6, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    u_ref, v_ref = u.clone(), v.clone()
    s = gan_kernels.spectral_norm_power_iteration_([w], [u], [v], [0], 2, 1e-12)
    s_ref = reference.spectral_norm_power_iteration_([w], [u_ref], [v_ref], [0], 2, 1e-12)
    assert_close(s, s_ref)
    assert_close(gan_kernels.spectral_norm_normalize([w], [u], [v], s, [0])[0], w / s_ref[0])


# ---- bad input -----------------------------------------------------------------------------------


class ScalarWeight(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.tensor(3.0))


class IntWeight(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("weight", torch.ones(3, 3, dtype=torch.int64))


@pytest.mark.parametrize(
    "make, kwargs, error, match",
    [
        (
            IntWeight,
            {},
            TypeError,
            "IntWeight.weight must be float64, float32, float16, bfloat16, complex64 or complex128, got torch.int64",
        ),
        (
            lambda: torch.nn.Linear(3, 2),
            dict(n_power_iterations=0),
            ValueError,
            "n_power_iterations must be >= 1, got 0",
        ),
        (lambda: torch.nn.Linear(3, 2), dict(eps=float("nan")), ValueError, "eps must be a finite number, got nan"),
        (lambda: torch.nn.Linear(3, 2), dict(eps=float("-inf")), ValueError, "eps must be a finite number, got -inf"),
        (
            lambda: torch.nn.Linear(3, 2),
            dict(name="wieght"),
            ValueError,
            "name='wieght' is not a parameter or buffer of Linear",
        ),
        (lambda: torch.nn.Linear(3, 2), dict(dim=2), IndexError, "dim=2 is out of range"),
        (  # PyTorch's raises at registration; ours registered and failed at forward on a missing _u
            ScalarWeight,
            {},
            ValueError,
            r"ScalarWeight.weight must have at least 1 dimension, got shape \[\]",
        ),
        (lambda: torch.nn.Linear(3, 2), dict(dim=0.0), TypeError, "dim must be an int, got float"),
        (
            lambda: torch.nn.Linear(3, 2),
            dict(n_power_iterations=1.0),
            TypeError,
            "n_power_iterations must be an int, got float",
        ),
        (
            lambda: torch.nn.Linear(3, 2),
            dict(eps=torch.tensor([1e-3, 1e-3])),
            TypeError,
            r"eps must be a real number or a 0-d real tensor, got a tensor of shape \[2\]",
        ),
        (
            lambda: torch.nn.utils.spectral_norm(torch.nn.Linear(3, 2)),
            {},
            ValueError,
            "Linear.weight is already normalised by the older torch.nn.utils.spectral_norm; "
            "call torch.nn.utils.remove_spectral_norm first",
        ),
    ],
)
def test_bad_input_names_the_argument(make, kwargs, error, match):
    with pytest.raises(error, match=match):
        spectral_norm(make(), **kwargs)


@settings(max_examples=40, deadline=None)
@given(data=st.data(), shape=st.lists(st.integers(1, 5), min_size=2, max_size=4))
def test_random_shapes_and_dims_match_reference(data, shape):
    dim = data.draw(st.integers(-len(shape), len(shape) - 1), label="dim")  # negative ones wrap
    torch.manual_seed(data.draw(st.integers(0, 2**31 - 1), label="seed"))
    weights, us, vs, dims = random_spectral_layers(torch.float64, "cpu", [(tuple(shape), dim), ((3, 4), 0)])
    # The reference formulas take dims in [0, ndim), as the public functions pass them.
    wrapped = [d % w.dim() for d, w in zip(dims, weights)]
    us_ref, vs_ref = [u.clone() for u in us], [v.clone() for v in vs]
    sigmas = gan_kernels.spectral_norm_power_iteration_(weights, us, vs, dims, 2, 1e-12)
    sigmas_ref = reference.spectral_norm_power_iteration_(weights, us_ref, vs_ref, wrapped, 2, 1e-12)
    assert_close(sigmas, sigmas_ref)
    for got, want in zip(us + vs, us_ref + vs_ref):
        assert_close(got, want)
    for got, want in zip(
        gan_kernels.spectral_norm_normalize(weights, us, vs, sigmas, dims),
        reference.spectral_norm_normalize(weights, us, vs, wrapped),
    ):
        assert_close(got, want)


# ---- unusual arguments to the ops ------------------------------------------------------------------


@pytest.mark.parametrize("path", ["public", "reference"])
@pytest.mark.parametrize(
    "bad, error, match",
    [
        (dict(us={1: torch.ones(4, dtype=torch.int64)}), TypeError, r"us\[1\] has dtype torch.int64 but weights\[1\]"),
        (
            dict(vs={0: torch.randn(7, dtype=torch.float64)}),
            TypeError,
            r"vs\[0\] has dtype torch.float64 but weights\[0\]",
        ),
        (dict(us={1: torch.randn(5)}), ValueError, r"us\[1\] must have shape \[4\] to match weights\[1\], got \[5\]"),
        (
            dict(vs={0: torch.randn(1, 7)}),
            ValueError,
            r"vs\[0\] must have shape \[7\] to match weights\[0\], got \[1, 7\]",
        ),
        (
            dict(weights={1: torch.randn(4, 3, 3, 2, dtype=torch.float64)}),
            TypeError,
            r"weights\[1\] has dtype torch.float64 but weights\[0\] has dtype torch.float32",
        ),
        (dict(sigmas=torch.ones(3)), ValueError, r"sigmas must have shape \[2\] \(one per weight\), got \[3\]"),
        (
            dict(sigmas=torch.ones(2, dtype=torch.float64)),
            TypeError,
            r"sigmas has dtype torch.float64 but weights\[0\]",
        ),
    ],
)
def test_u_v_and_sigmas_of_the_wrong_dtype_or_length_are_rejected_on_both_paths(monkeypatch, path, bad, error, match):
    """The compiled ops check u, v and sigmas against the weights; the reference took an integer u
    (every update truncated to 0, sigma 0 returned), a u of another dtype, or a wrong length (an mv
    error naming nothing), and ignored sigmas. Both paths give the compiled op's error."""
    if path == "reference":
        monkeypatch.setattr(gan_kernels.ops.spectral_norm._backend, "use_compiled", lambda *args: False)
    weights, us, vs, dims = random_spectral_layers(torch.float32, "cpu", SPECTRAL_SHAPES[:2])
    for index, weight in bad.get("weights", {}).items():
        weights[index] = weight
        us[index], vs[index] = us[index].to(weight.dtype), vs[index].to(weight.dtype)
    for index, vector in bad.get("us", {}).items():
        us[index] = vector
    for index, vector in bad.get("vs", {}).items():
        vs[index] = vector
    if "sigmas" in bad:
        with pytest.raises(error, match=match):
            gan_kernels.spectral_norm_normalize(weights, us, vs, bad["sigmas"], dims)
    else:
        with pytest.raises(error, match=match):
            gan_kernels.spectral_norm_power_iteration_(weights, us, vs, dims)
        with pytest.raises(error, match=match):
            gan_kernels.spectral_norm_normalize(weights, us, vs, torch.ones(2), dims)


@pytest.mark.parametrize("entry", ["weights", "us", "vs", "sigmas"])
def test_a_meta_tensor_in_a_later_entry_is_rejected(entry):
    """A meta tensor anywhere made the dispatcher run the fake kernel for the whole call, returning
    uninitialised values for the CPU layers."""
    weights, us, vs, dims = random_spectral_layers(torch.float32, "cpu", SPECTRAL_SHAPES[:2])
    sigmas = torch.ones(2)
    if entry == "sigmas":
        sigmas = sigmas.to("meta")
        match = "sigmas is on meta but weights\\[0\\] is on cpu"
    else:
        listed = dict(weights=weights, us=us, vs=vs)[entry]
        listed[1] = listed[1].to("meta")
        match = rf"{entry}\[1\] is on meta but weights\[0\] is on cpu"
    calls = [lambda: gan_kernels.spectral_norm_normalize(weights, us, vs, sigmas, dims)]
    if OPS_REGISTERED:
        calls += [
            lambda: normalize_op(weights, us, vs, sigmas, dims),
            lambda: normalize_backward_op([torch.ones_like(w) for w in weights], weights, us, vs, sigmas, dims),
        ]
    if entry != "sigmas":
        calls.append(lambda: gan_kernels.spectral_norm_power_iteration_(weights, us, vs, dims))
        if OPS_REGISTERED:
            calls.append(lambda: power_op(weights, us, vs, dims, 1, 1e-12))
    for call in calls:
        with pytest.raises(ValueError, match=match):
            call()


def test_a_meta_grad_in_a_later_entry_of_the_backward_op_is_rejected():
    if not OPS_REGISTERED:
        pytest.skip("the backward op is only called directly")
    weights, us, vs, dims = random_spectral_layers(torch.float32, "cpu", SPECTRAL_SHAPES[:2])
    grads = [torch.ones_like(weights[0]), torch.ones_like(weights[1], device="meta")]
    with pytest.raises(ValueError, match=r"grads\[1\] is on meta but weights\[0\] is on cpu"):
        normalize_backward_op(grads, weights, us, vs, torch.ones(2), dims)


def test_u_or_v_shared_between_layers_is_rejected():
    """The power iteration writes every u and v in place; one tensor for two layers would race."""
    weights, us, vs, dims = random_spectral_layers(torch.float32, "cpu", [((5, 7), 0), ((5, 3), 0)])
    buffer = torch.randn(12)
    cases = [
        ([us[0], us[0]], vs, r"us\[0\] and us\[1\] share memory"),
        ([buffer[:5], us[1]], [buffer[3:10], vs[1]], r"us\[0\] and vs\[0\] share memory"),
    ]
    calls = [gan_kernels.spectral_norm_power_iteration_] + ([power_op] if OPS_REGISTERED else [])
    for call in calls:
        for shared_us, shared_vs, match in cases:
            with pytest.raises(ValueError, match=match + ".*every layer needs its own u and v tensors"):
                call(weights, shared_us, shared_vs, dims, 1, 1e-12)
        # Disjoint parts of one buffer are fine (the batched group passes such views).
        gan_kernels.spectral_norm_power_iteration_(weights, [buffer[:5], buffer[5:10]], vs, dims, 1, 1e-12)


def test_negative_dims_wrap_as_pytorch_does():
    torch.manual_seed(18)
    weights, us, vs, dims = random_spectral_layers(torch.float64, "cpu", SPECTRAL_SHAPES[:3])
    negative = [dim - w.dim() for dim, w in zip(dims, weights)]
    us_neg, vs_neg = [u.clone() for u in us], [v.clone() for v in vs]
    sigmas = gan_kernels.spectral_norm_power_iteration_(weights, us, vs, dims, 2, 1e-12)
    sigmas_neg = gan_kernels.spectral_norm_power_iteration_(weights, us_neg, vs_neg, negative, 2, 1e-12)
    assert torch.equal(sigmas_neg, sigmas)
    for got, want in zip(
        gan_kernels.spectral_norm_normalize(weights, us_neg, vs_neg, sigmas_neg, negative),
        gan_kernels.spectral_norm_normalize(weights, us, vs, sigmas, dims),
    ):
        assert torch.equal(got, want)
    leaves = tuple(w.requires_grad_() for w in weights)
    # The double backward reshapes by dim: with -1 it raised "shape ... is invalid".
    assert torch.autograd.gradgradcheck(lambda *ws: tuple(normalised_weights(list(ws), us, vs, negative, 0)), leaves)
    if OPS_REGISTERED:

        def direct(*ws):  # the op called as torch.ops, without the public function's wrapping
            detached = [w.detach() for w in ws]
            sigmas = power_op(detached, [u.clone() for u in us], [v.clone() for v in vs], negative, 0, 1e-12)
            return tuple(normalize_op(list(ws), us, vs, sigmas, negative))

        assert torch.autograd.gradgradcheck(direct, leaves)


@pytest.mark.parametrize(
    "dim, error, match",
    [
        (0.7, TypeError, r"dims\[0\] must be an int, got float"),
        (True, TypeError, r"dims\[0\] must be an int, got bool"),
        (torch.tensor(0.0), TypeError, r"dims\[0\] must be an int, got Tensor"),
        (
            -3,
            IndexError,
            r"dims\[0\]=-3 is out of range for a tensor with 2 dimensions \(expected -2 <= dims\[0\] < 2\)",
        ),
        (2, IndexError, r"dims\[0\]=2 is out of range"),
    ],
)
def test_dims_that_are_not_an_int_in_range_are_rejected(dim, error, match):
    weights, us, vs, dims = random_spectral_layers(torch.float32, "cpu", SPECTRAL_SHAPES[:2])
    with pytest.raises(error, match=match):
        gan_kernels.spectral_norm_power_iteration_(weights, us, vs, [dim, dims[1]])
    with pytest.raises(error, match=match):
        gan_kernels.spectral_norm_normalize(weights, us, vs, torch.ones(2), [dim, dims[1]])


def test_numpy_integer_dims_and_scalars_are_accepted():
    torch.manual_seed(19)
    weights, us, vs, dims = random_spectral_layers(torch.float64, "cpu", SPECTRAL_SHAPES[:3])
    us_np, vs_np = [u.clone() for u in us], [v.clone() for v in vs]
    sigmas = gan_kernels.spectral_norm_power_iteration_(weights, us, vs, dims, 2, 1e-6)
    sigmas_np = gan_kernels.spectral_norm_power_iteration_(
        weights, us_np, vs_np, [np.int64(d) for d in dims], np.int32(2), np.float32(1e-6)
    )
    assert torch.equal(sigmas_np, sigmas)


@requires_ops
def test_vmap_of_the_ops_is_a_clear_error():
    weights, us, vs, dims = random_spectral_layers(torch.float32, "cpu", SPECTRAL_SHAPES[:1])
    batch = torch.randn(3, *weights[0].shape)
    sigmas = torch.ones(1)
    ops = torch.ops.gan_kernels
    for op_name, call in [
        ("spectral_norm_normalize", lambda w: normalize_op([w], us, vs, sigmas, dims)[0]),
        ("spectral_norm_normalize_backward", lambda w: normalize_backward_op([w], weights, us, vs, sigmas, dims)[0]),
        ("spectral_norm_power_iteration_", lambda w: power_op([w], us, vs, dims, 1, 1e-12)),
        ("spectral_norm_normalize_one", lambda w: ops.spectral_norm_normalize_one(w, us[0], vs[0], sigmas[0], 0)),
        (
            "spectral_norm_normalize_one_backward",
            lambda w: ops.spectral_norm_normalize_one_backward(w, weights[0], us[0], vs[0], sigmas[0], 0),
        ),
        (
            "spectral_norm_power_iteration_one_",
            lambda w: ops.spectral_norm_power_iteration_one_(w, us[0], vs[0], 0, 1, 1e-12),
        ),
    ]:
        with pytest.raises(
            NotImplementedError,
            match=f"gan_kernels::{op_name} has no vmap rule: the spectral-norm ops are already "
            "batched over layers, so pass the weights as a list",
        ):
            torch.func.vmap(call)(batch)
