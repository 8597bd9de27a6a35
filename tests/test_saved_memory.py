"""What autograd keeps for the backward of our ops (the activation memory that limits a GAN's batch
size), seen through torch.autograd.graph.saved_tensors_hooks: each op saves only what its backward
reads, an R1-style double backward keeps no more than the reference's graph, nothing is saved under
no_grad or inference_mode, and a penalty's graph is gone as soon as its loss is backwarded or dropped."""

import gc
import weakref

import pytest
import torch
from helpers import requires_ops

import gan_kernels
from gan_kernels import _backend, nn, penalties, reference

compiled_only = pytest.mark.skipif(
    not _backend.compiled_available(), reason="what the compiled ops save; the reference saves its own graph"
)
DTYPES = [torch.float32, torch.bfloat16]


def storage(t):
    return t.untyped_storage().data_ptr()


class _Holder:
    """One saved tensor, detached: packing a saved output as itself would make it hold its own
    grad_fn, a reference cycle of the measurement's making. Autograd reattaches the grad_fn on unpack."""

    __slots__ = ("tensor", "__weakref__")

    def __init__(self, tensor):
        self.tensor = tensor.detach()


class Saved:
    """Records every tensor autograd saves while it is active: its storage and that storage's size,
    and whether anything still keeps it (``alive``)."""

    def __init__(self):
        self.bytes_by_storage = {}
        self._holders = []
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda holder: holder.tensor)

    def _pack(self, t):
        self.bytes_by_storage[storage(t)] = t.untyped_storage().nbytes()
        holder = _Holder(t)
        self._holders.append(weakref.ref(holder))
        return holder

    def __enter__(self):
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self._hooks.__exit__(*exc)

    def total_bytes(self):
        return sum(self.bytes_by_storage.values())

    def alive(self):
        return sum(ref() is not None for ref in self._holders)


def random_inputs(dtype, shape=(4, 8, 4, 4)):
    torch.manual_seed(0)
    x = torch.randn(shape, dtype=dtype, requires_grad=True)
    b = torch.randn(shape[1], dtype=dtype, requires_grad=True)
    return x, b


# op(x, b) -> y; the tensors (of x, b, y and the gradient dy of y) that its forward saves, and those
# that the create_graph backward of a penalty saves to differentiate that gradient again. A
# piecewise-linear act reads the sign of y, which the next layer keeps anyway (StyleGAN's choice), and
# has no second derivative; a smooth act reads x (and b, to form x * scale + b), and its second-order
# term dy as well; a clamp reads x, as y cannot tell a value on the bound (whose gradient passes, as
# torch.clamp's) from a clipped one; a linear act without clamp needs nothing.
SMOOTH = (("x", "b"), ("x", "b", "dy"))
SAVES = {
    "bias_act linear": (lambda x, b: gan_kernels.bias_act(x, b, act="linear", gain=2.0), (), ()),
    "bias_act relu": (lambda x, b: gan_kernels.bias_act(x, b, act="relu"), ("y",), ("y",)),
    "bias_act lrelu": (lambda x, b: gan_kernels.bias_act(x, b, act="lrelu"), ("y",), ("y",)),
    "bias_act lrelu gain scale": (
        lambda x, b: gan_kernels.bias_act(x, b, act="lrelu", gain=-0.5, scale=0.7),
        ("y",),
        ("y",),
    ),
    **{
        f"bias_act {act}": ((lambda x, b, act=act: gan_kernels.bias_act(x, b, act=act)), *SMOOTH)
        for act in ("tanh", "sigmoid", "elu", "selu", "softplus", "swish")
    },
    "bias_act lrelu clamp": (lambda x, b: gan_kernels.bias_act(x, b, act="lrelu", clamp=1.0), ("x", "b"), ("x", "b")),
    "bias_act linear clamp": (
        lambda x, b: gan_kernels.bias_act(x, b, act="linear", clamp=1.0),
        ("x", "b"),
        ("x", "b"),
    ),
    "pixel_norm": (lambda x, b: gan_kernels.pixel_norm(x), ("x",), ("x", "dy")),
    "minibatch_std": (lambda x, b: gan_kernels.minibatch_std(x), ("x",), ("x", "dy")),
    "minibatch_discrimination": (
        lambda x, b: gan_kernels.minibatch_discrimination(x.flatten(2)),
        ("x",),
        ("x", "dy"),
    ),
}


@requires_ops
@compiled_only
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", SAVES)
def test_an_op_saves_only_what_its_derivatives_read(case, dtype):
    op, forward_saves, first_derivative_saves = SAVES[case]
    x, b = random_inputs(dtype)
    with Saved() as forward:
        y = op(x, b)
    dy = torch.randn_like(y)
    with Saved() as first_derivative:
        torch.autograd.grad(y, (x, b), dy, create_graph=True, allow_unused=True)
    named = {"x": x, "b": b, "y": y, "dy": dy}
    assert set(forward.bytes_by_storage) == {storage(named[name]) for name in forward_saves}
    assert set(first_derivative.bytes_by_storage) == {storage(named[name]) for name in first_derivative_saves}


@requires_ops
@compiled_only
@pytest.mark.parametrize("dtype", DTYPES)
def test_per_sample_penalty_saves_g_and_the_per_sample_sums(dtype):
    g, _ = random_inputs(dtype)
    with Saved() as saved:
        gan_kernels.per_sample_penalty(g, 1.0)
    others = {s: n for s, n in saved.bytes_by_storage.items() if s != storage(g)}
    assert storage(g) in saved.bytes_by_storage
    assert list(others.values()) == [4 * g.shape[0]]  # float32 sums of squares, which the backward reads


@requires_ops
@compiled_only
@pytest.mark.parametrize("dtype", DTYPES)
def test_spectral_norm_saves_the_weights_and_vectors(dtype):
    torch.manual_seed(0)
    weights = [torch.randn(8, 4, 3, 3, dtype=dtype, requires_grad=True), torch.randn(6, 5, dtype=dtype)]
    us = [torch.randn(8, dtype=dtype), torch.randn(6, dtype=dtype)]
    vs = [torch.randn(36, dtype=dtype), torch.randn(5, dtype=dtype)]
    sigmas = gan_kernels.spectral_norm_power_iteration_(weights, us, vs, [0, 0], 1, 1e-12)
    with Saved() as saved:
        gan_kernels.spectral_norm_normalize(weights, us, vs, sigmas, [0, 0])
    assert set(saved.bytes_by_storage) == {storage(t) for t in [*weights, *us, *vs, sigmas]}


def _bias_act_case(act, clamp):
    def case(dtype):
        return (
            lambda x, b: gan_kernels.bias_act(x, b, act=act, clamp=clamp),
            lambda x, b: reference.bias_act(x, b, act=act, clamp=clamp),
            random_inputs(dtype),
        )

    return case


def _on_x(ours, ref):
    return lambda dtype: (ours, ref, random_inputs(dtype)[:1])


def _spectral_norm_case(dtype):
    torch.manual_seed(1)
    weight = torch.randn(8, 4, 3, 3, dtype=dtype, requires_grad=True)
    u, v = torch.randn(8, dtype=dtype), torch.randn(36, dtype=dtype)
    sigmas = gan_kernels.spectral_norm_power_iteration_([weight.detach()], [u], [v], [0], 1, 1e-12)
    return (
        lambda w: gan_kernels.spectral_norm_normalize([w], [u], [v], sigmas, [0])[0],
        lambda w: reference.spectral_norm_normalize([w], [u], [v], [0])[0],
        (weight,),
    )


# name: dtype -> (ours, the reference, their inputs).
DOUBLE_BACKWARD = {
    **{
        f"bias_act {act} clamp={clamp}": _bias_act_case(act, clamp)
        for act in ("linear", "relu", "lrelu", "tanh", "swish")
        for clamp in (None, 1.0)
    },
    "pixel_norm": _on_x(gan_kernels.pixel_norm, reference.pixel_norm),
    "minibatch_std": _on_x(gan_kernels.minibatch_std, reference.minibatch_std),
    "per_sample_penalty": _on_x(
        lambda g: gan_kernels.per_sample_penalty(g, 1.0), lambda g: reference.per_sample_penalty(g, 1.0)
    ),
    "minibatch_discrimination": _on_x(
        lambda x: gan_kernels.minibatch_discrimination(x.flatten(2)),
        lambda x: reference.minibatch_discrimination(x.flatten(2)),
    ),
    "spectral_norm_normalize": _spectral_norm_case,
}


def saved_through_first_derivative(op, inputs):
    """Bytes saved by a forward and the create_graph backward a penalty takes of it: what is kept
    until the penalty's loss is backwarded."""
    with Saved() as saved:
        y = op(*inputs)
        torch.manual_seed(2)
        torch.autograd.grad(y, inputs, torch.randn_like(y), create_graph=True)
    return saved.total_bytes()


@requires_ops
@compiled_only
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", DOUBLE_BACKWARD)
def test_a_penalty_through_the_op_keeps_no_more_than_through_the_reference(case, dtype):
    ours, ref, inputs = DOUBLE_BACKWARD[case](dtype)
    assert saved_through_first_derivative(ours, inputs) <= saved_through_first_derivative(ref, inputs)


def _discriminator(dtype):
    torch.manual_seed(3)
    return torch.nn.Sequential(
        nn.EqualizedConv2d(3, 8, 3, activation="lrelu"),
        nn.spectral_norm(torch.nn.Conv2d(8, 8, 3, padding=1)),
        torch.nn.Tanh(),
        nn.PixelNorm(),
        nn.MinibatchStd(group_size=2),
        nn.EqualizedConv2d(9, 8, 3, activation="softplus", conv_clamp=4.0),
        torch.nn.Flatten(),
        nn.EqualizedLinear(8 * 4 * 4, 1),
    ).to(dtype)


def _generator(dtype):
    torch.manual_seed(4)
    return torch.nn.Sequential(
        nn.EqualizedLinear(8, 3 * 4 * 4, activation="lrelu"), torch.nn.Unflatten(1, (3, 4, 4))
    ).to(dtype)


PENALTIES = {
    "r1": lambda D, real, fake: penalties.r1(D, real, 10.0),
    "r2": lambda D, real, fake: penalties.r2(D, fake, 10.0),
    "wgan_gp": lambda D, real, fake: penalties.wgan_gp(D, real, fake),
    "dragan": lambda D, real, fake: penalties.dragan(D, real),
    "zero_centered_gp": lambda D, real, fake: penalties.zero_centered_gp(D, real, fake, 1.0),
}


@pytest.fixture
def without_collection():
    """Memory a reference cycle holds waits for the cyclic collector (the GPU's too): checked with it off."""
    gc.collect()
    gc.disable()
    yield
    gc.enable()


@pytest.mark.parametrize("backward", [True, False], ids=["backwarded", "dropped"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", PENALTIES)
def test_a_penalty_keeps_nothing_once_its_loss_is_backwarded_or_dropped(name, dtype, backward, without_collection):
    D = _discriminator(dtype)
    real, fake = torch.randn(4, 3, 4, 4, dtype=dtype), torch.randn(4, 3, 4, 4, dtype=dtype)
    with Saved() as saved:
        loss = PENALTIES[name](D, real, fake)
    assert saved.alive() > 0
    if backward:
        loss.backward()
    del loss
    assert saved.alive() == 0


@pytest.mark.parametrize("backward", [True, False], ids=["backwarded", "dropped"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_the_path_length_penalty_keeps_nothing_once_its_loss_is_backwarded_or_dropped(
    dtype, backward, without_collection
):
    G, regularizer = _generator(dtype), penalties.PathLengthRegularizer()
    latents = torch.randn(4, 8, dtype=dtype, requires_grad=True)
    with Saved() as saved:
        loss = regularizer(G(latents), latents)
    assert saved.alive() > 0
    if backward:
        loss.backward()
    del loss
    assert saved.alive() == 0
    assert not regularizer.mean_length.requires_grad


@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
@pytest.mark.parametrize("batched", [False, True], ids=["per_layer", "batched_spectral_norm"])
def test_no_grad_and_inference_mode_save_nothing(mode, batched):
    D = _discriminator(torch.float32)
    if batched:
        nn.batch_spectral_norm(D)
    x = torch.randn(4, 3, 4, 4, requires_grad=True)
    with mode(), Saved() as saved:
        y = D(x)
        gan_kernels.per_sample_penalty(x, 1.0)
        gan_kernels.spectral_norm_normalize([D[5].weight], [torch.randn(8)], [torch.randn(81)], torch.ones(1), [0])
    assert saved.bytes_by_storage == {}
    assert not y.requires_grad
    assert all(not sigma.requires_grad for sigma in nn.spectral_sigmas(D).values())
