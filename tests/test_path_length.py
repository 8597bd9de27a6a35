"""gan_kernels.penalties.PathLengthRegularizer against StyleGAN2's formula written out in plain PyTorch:
value, parameter gradients and second derivatives; gradcheck / gradgradcheck; the running mean
(buffer, state dict, average over ranks); zero gradients; lazy regularisation; bad input."""

import copy
import math
import os
import tempfile

import numpy as np
import pytest
import torch
from helpers import DEVICES, unregistered_autograd_is_an_error

from gan_kernels.penalties import LazyRegularizer, PathLengthRegularizer

N, NUM_WS, W_DIM = 4, 3, 5
IMAGE = (2, 3, 3)


class TinySynthesis(torch.nn.Module):
    """ws [N, num_ws, w_dim] -> images [N, 2, 3, 3]: smooth, so every derivative is nonzero."""

    def __init__(self, seed=0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        shape = (NUM_WS * W_DIM, math.prod(IMAGE))
        self.weight = torch.nn.Parameter(0.5 * torch.randn(shape, generator=generator, dtype=torch.float64))

    def forward(self, ws):
        return torch.tanh(ws.flatten(1) @ self.weight).view(-1, *IMAGE)


def make_ws(seed=1, shape=(N, NUM_WS, W_DIM)):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator, dtype=torch.float64).requires_grad_()


def textbook(images, ws, mean_before, decay, noise_seed):
    """StyleGAN2's path-length penalty, the running mean a constant for autograd."""
    pixels = images.shape[2] * images.shape[3]
    generator = torch.Generator(device=images.device).manual_seed(noise_seed)
    y = torch.randn(images.shape, generator=generator, dtype=images.dtype, device=images.device)
    y = y / math.sqrt(pixels)
    (g,) = torch.autograd.grad((images * y).sum(), ws, create_graph=True)
    lengths = g.square().sum(2).mean(1).sqrt()
    mean = mean_before + decay * (lengths.mean().detach() - mean_before)
    return (lengths - mean).square().mean(), mean


def ours(regularizer, images, ws, noise_seed):
    return regularizer(images, ws, generator=torch.Generator(device=images.device).manual_seed(noise_seed))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mean_before", [0.0, 0.8])
def test_penalty_gradients_and_second_derivatives_equal_the_formula(mean_before, device):
    g_net = TinySynthesis().to(device)
    regularizer = PathLengthRegularizer(decay=0.3).double().to(device)
    regularizer.mean_length.fill_(mean_before)
    ws = make_ws().detach().to(device).requires_grad_()
    images = g_net(ws)
    with unregistered_autograd_is_an_error():
        penalty = ours(regularizer, images, ws, noise_seed=7)
    expected, expected_mean = textbook(images, ws, mean_before, 0.3, noise_seed=7)
    torch.testing.assert_close(penalty, expected, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(regularizer.mean_length, expected_mean, rtol=1e-12, atol=0)

    inputs = (g_net.weight, ws)
    grads = torch.autograd.grad(penalty, inputs, create_graph=True)
    expected_grads = torch.autograd.grad(expected, inputs, create_graph=True)
    for grad, grad_expected in zip(grads, expected_grads):
        assert grad.abs().max() > 0
        torch.testing.assert_close(grad, grad_expected, rtol=1e-10, atol=1e-12)
    # Second order: the derivative of a random projection of the first derivatives.
    projections = [
        torch.randn(grad.shape, generator=torch.Generator().manual_seed(3), dtype=grad.dtype).to(device)
        for grad in grads
    ]
    second = torch.autograd.grad(sum((g * p).sum() for g, p in zip(grads, projections)), inputs, retain_graph=True)
    second_expected = torch.autograd.grad(sum((g * p).sum() for g, p in zip(expected_grads, projections)), inputs)
    for grad, grad_expected in zip(second, second_expected):
        assert grad.abs().max() > 0
        torch.testing.assert_close(grad, grad_expected, rtol=1e-9, atol=1e-11)


def test_latents_without_middle_dims():
    # [N, D] latents (a plain z): k = 1, the length is the norm of g.
    g_net = TinySynthesis()
    ws = make_ws(shape=(N, NUM_WS * W_DIM))
    images = g_net(ws)
    regularizer = PathLengthRegularizer().double()
    penalty = ours(regularizer, images, ws, noise_seed=2)
    y = torch.randn(images.shape, generator=torch.Generator().manual_seed(2), dtype=images.dtype) / 3
    (g,) = torch.autograd.grad((images * y).sum(), ws, create_graph=True)
    lengths = g.norm(dim=1)
    mean = 0.01 * lengths.mean().detach()
    torch.testing.assert_close(penalty, (lengths - mean).square().mean(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("mean_length", [0.0, 0.6])
def test_gradcheck_and_gradgradcheck(mean_length):
    # decay 0 keeps the centre at mean_length however gradcheck perturbs the inputs: gradcheck
    # compares derivatives of the penalty for a given centre, and the centre is a constant for autograd.
    regularizer = PathLengthRegularizer(decay=0.0).double()

    def penalty(weight, ws):
        regularizer.mean_length.fill_(mean_length)
        images = torch.tanh(ws.flatten(1) @ weight).view(-1, 1, 2, 2)
        return ours(regularizer, images, ws, noise_seed=5)

    # Small, so that gradgradcheck's numerical third derivatives stay quick.
    generator = torch.Generator().manual_seed(4)
    weight = torch.randn(2 * 2, 4, generator=generator, dtype=torch.float64).requires_grad_()
    inputs = (weight, make_ws(shape=(2, 2, 2)))
    with unregistered_autograd_is_an_error():
        assert torch.autograd.gradcheck(penalty, inputs, fast_mode=True)
        assert torch.autograd.gradgradcheck(penalty, inputs, fast_mode=True)


def test_running_mean_is_a_buffer_in_the_state_dict():
    g_net = TinySynthesis()
    regularizer = PathLengthRegularizer(decay=0.1).double()
    assert "mean_length" in regularizer.state_dict() and float(regularizer.mean_length) == 0
    means = []
    for seed in range(3):
        ws = make_ws(seed)
        _, lengths_mean = textbook(g_net(ws), ws, 0.0, 1.0, noise_seed=seed)  # decay 1: the batch mean
        expected = (means[-1] if means else 0.0) * 0.9 + 0.1 * float(lengths_mean)
        ours(regularizer, g_net(ws), ws, noise_seed=seed)
        means.append(float(regularizer.mean_length))
        assert means[-1] == pytest.approx(expected, rel=1e-12)
    restored = PathLengthRegularizer(decay=0.1).double()
    restored.load_state_dict(regularizer.state_dict())
    assert float(restored.mean_length) == means[-1]


@pytest.mark.parametrize(
    "convert",
    [
        lambda m: m.to("cpu", torch.float16),
        lambda m: m.to("cpu", torch.bfloat16),
        lambda m: m.half(),
        lambda m: m.bfloat16(),
    ],
    ids=["to-float16", "to-bfloat16", "half", "bfloat16"],
)
def test_running_mean_stays_float32_when_the_regularizer_is_converted_to_half_precision(convert):
    # plr.to(device, torch.bfloat16) (or .half()) with the rest of the model: a half-precision running
    # mean stalls where decay * (batch mean - a) is under half an ulp of a (in bfloat16, for a near
    # 1, when the batch mean is within about 0.4 of a), so a stays far from the lengths' mean. A few
    # updates suffice: rounded to half precision, the mean leaves the float32 one at the first.
    g_net = TinySynthesis().float()
    reference = PathLengthRegularizer(decay=0.05)
    converted = convert(PathLengthRegularizer(decay=0.05))
    for seed in range(8):
        ws = make_ws(seed).detach().float().requires_grad_()
        ours(reference, g_net(ws), ws, noise_seed=seed)
        ours(converted, g_net(ws), ws, noise_seed=seed)
    torch.testing.assert_close(converted.mean_length, reference.mean_length, rtol=0, atol=0)
    assert converted.state_dict()["mean_length"].dtype == torch.float32
    assert PathLengthRegularizer().double().mean_length.dtype == torch.float64  # float64 stays possible


def test_finite_at_zero_gradients():
    # A ReLU generator whose first two samples are cut off: their gradient is exactly 0 (the norm's
    # derivative is undefined there); the others are not.
    weight = torch.rand(NUM_WS * W_DIM, math.prod(IMAGE), dtype=torch.float64, requires_grad=True)
    ws = make_ws().detach().abs()
    ws[:2] *= -1
    ws.requires_grad_()
    for mean_before in (0.0, 0.5):
        regularizer = PathLengthRegularizer().double()
        regularizer.mean_length.fill_(mean_before)
        images = torch.relu(ws.flatten(1) @ weight).view(-1, *IMAGE)
        penalty = ours(regularizer, images, ws, noise_seed=1)
        expected, _ = textbook(images, ws, mean_before, 0.01, noise_seed=1)
        torch.testing.assert_close(penalty, expected, rtol=1e-12, atol=1e-14)
        (grad,) = torch.autograd.grad(penalty, weight, create_graph=True)
        (second,) = torch.autograd.grad(grad.sum(), weight)
        assert torch.isfinite(grad).all() and torch.isfinite(second).all()
        assert grad.abs().max() > 0


def test_whole_batch_with_zero_gradients_and_no_running_mean_yet():
    weight = torch.rand(NUM_WS * W_DIM, math.prod(IMAGE), dtype=torch.float64, requires_grad=True)
    ws = (-make_ws().detach().abs()).requires_grad_()
    images = torch.relu(ws.flatten(1) @ weight).view(-1, *IMAGE)
    regularizer = PathLengthRegularizer().double()
    penalty = ours(regularizer, images, ws, noise_seed=1)
    (grad,) = torch.autograd.grad(penalty, weight)
    assert penalty.item() == 0 and float(regularizer.mean_length) == 0
    assert torch.isfinite(grad).all()


def test_a_nan_running_mean_keeps_the_penalty_nan():
    # A diverged batch makes the running mean NaN for good (as StyleGAN2's pl_mean). The penalty
    # against a NaN mean must stay NaN, as StyleGAN2's (lengths - pl_mean)^2 is: it was the finite
    # centre-0 form mean ||g||^2 / k, which silently pulls every length to 0.
    g_net = TinySynthesis()
    regularizer = PathLengthRegularizer().double()
    ws = make_ws().detach()
    ws[1] = math.nan
    ws.requires_grad_()
    assert torch.isnan(ours(regularizer, g_net(ws), ws, noise_seed=1))
    assert torch.isnan(regularizer.mean_length)
    ws = make_ws(seed=2)
    penalty = ours(regularizer, g_net(ws), ws, noise_seed=2)
    assert torch.isnan(penalty)
    (grad,) = torch.autograd.grad(penalty, g_net.weight)
    assert torch.isnan(grad).all()


def test_grad_scaler_follows_the_amp_recipe():
    """g of the scaled sum, unscaled (a power of 2: exact): the penalty, its running mean and G's
    gradients are those without a scaler."""
    results = []
    for scaler in (None, torch.amp.GradScaler("cpu", init_scale=2.0**16)):
        G, plr = TinySynthesis(), PathLengthRegularizer()
        for step in range(2):
            ws = make_ws(seed=step)
            penalty = plr(G(ws), ws, generator=torch.Generator().manual_seed(step), scaler=scaler)
        (grad,) = torch.autograd.grad(penalty, G.weight)
        results.append((penalty.detach(), plr.mean_length.clone(), grad))
    for got, want in zip(*results):
        assert torch.equal(got, want)


def test_a_grad_scaler_overflow_leaves_the_running_mean_alone():
    # GradScaler raises its scale until a gradient overflows, then skips that step: an fp16 g (ws
    # from an autocast mapping network) that overflows is such a step. The running mean took its
    # inf for good (lerp towards inf), so every later penalty was inf or NaN and the scaler skipped
    # every later step of G. The penalty of the overflowing step itself stays non-finite.
    G = TinySynthesis()
    plr, reference = PathLengthRegularizer(), PathLengthRegularizer()
    for step, scale in enumerate([2.0**10, 2.0**30, 2.0**10]):
        ws = make_ws(seed=step).detach().half().requires_grad_()
        scaler = torch.amp.GradScaler("cpu", init_scale=scale)
        penalty = plr(G(ws.double()), ws, generator=torch.Generator().manual_seed(step), scaler=scaler)
        if scale == 2.0**10:
            expected = reference(G(ws.double()), ws, generator=torch.Generator().manual_seed(step), scaler=scaler)
            assert torch.equal(penalty, expected)
        else:
            assert not torch.isfinite(penalty)
        torch.testing.assert_close(plr.mean_length, reference.mean_length, rtol=0, atol=0)
    assert torch.isfinite(plr.mean_length) and plr.mean_length > 0


def test_a_grad_scaler_keeps_a_float16_gradient_that_underflows_unscaled():
    # ws in float16 (a mapping network in half precision) have a float16 g: of about 1e-8 here, so
    # subnormal or 0 in float16. Scaled by 2^24 it is a normal float16 number; unscaled in float16 it
    # was subnormal again, and the running mean 19% off the float64 one, with the scaler as without it.
    G = TinySynthesis()
    ws = make_ws().detach().half().requires_grad_()
    ws_exact = ws.detach().double().requires_grad_()  # the same values
    plr = PathLengthRegularizer(decay=1.0)  # the running mean is then the batch's mean length
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**24)
    penalty = plr(1e-7 * G(ws.double()), ws, generator=torch.Generator().manual_seed(3), scaler=scaler)
    assert penalty.dtype == torch.float16  # the latents' dtype, as without a scaler
    _, expected_mean = textbook(1e-7 * G(ws_exact), ws_exact, 0.0, 1.0, noise_seed=3)
    # The scaled g rounded to float16 once: a relative error of at most 2^-11 per element.
    torch.testing.assert_close(plr.mean_length, expected_mean.float(), rtol=2.0**-11, atol=0)


@pytest.mark.parametrize("scale", [0.0, math.inf])
def test_a_grad_scaler_whose_scale_is_zero_or_not_finite_is_named(scale):
    G, plr, ws = TinySynthesis(), PathLengthRegularizer(), make_ws()
    with pytest.raises(ValueError, match=r"scaler.get_scale\(\) must be"):
        plr(G(ws), ws, scaler=torch.amp.GradScaler("cpu", init_scale=scale))
    assert plr.mean_length == 0  # refused before the running mean moved


def test_lazy_regularizer_runs_it_every_interval_steps_scaled():
    g_net = TinySynthesis()
    lazy = LazyRegularizer(4)
    regularizer, twin = PathLengthRegularizer().double(), PathLengthRegularizer().double()
    ws = make_ws()
    scaled = lazy(0, regularizer, g_net(ws), ws, generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(scaled, 4 * ours(twin, g_net(ws), ws, noise_seed=9))
    mean_after_due_step = float(regularizer.mean_length)
    assert mean_after_due_step > 0
    assert lazy(1, regularizer, g_net(ws), ws) is None
    assert float(regularizer.mean_length) == mean_after_due_step


def test_a_parameter_the_penalty_does_not_reach_gets_a_zero_gradient():
    # A bias added to the images does not change their derivative, so the penalty proper does not
    # depend on it; the regulariser's 0 * images term gives it a zero gradient (not None), which
    # DistributedDataParallel needs to reduce a penalty backpropagated on its own.
    g_net = TinySynthesis()
    bias = torch.nn.Parameter(torch.ones(IMAGE[0], 1, 1, dtype=torch.float64))
    ws = make_ws()
    images = g_net(ws) + bias
    penalty = ours(PathLengthRegularizer(decay=0.3).double(), images, ws, noise_seed=3)
    expected, _ = textbook(images, ws, 0.0, 0.3, noise_seed=3)
    torch.testing.assert_close(penalty, expected, rtol=1e-12, atol=1e-14)
    penalty.backward()
    assert bias.grad is not None and torch.equal(bias.grad, torch.zeros_like(bias))


def test_decay_accepts_numpy_and_tensor_scalars():
    assert PathLengthRegularizer(np.float32(0.25)).decay == 0.25
    assert PathLengthRegularizer(torch.tensor(0.5)).decay == 0.5


@pytest.mark.parametrize(
    "decay, error",
    [(-0.1, ValueError), (1.5, ValueError), (float("nan"), ValueError), ("0.1", TypeError), (True, TypeError)],
)
def test_bad_decay_names_the_argument_and_value(decay, error):
    with pytest.raises(error, match=f"decay.*{decay!r}" if error is ValueError else "decay"):
        PathLengthRegularizer(decay)


def test_bad_inputs_name_the_argument():
    g_net = TinySynthesis()
    regularizer = PathLengthRegularizer().double()
    ws = make_ws()
    with pytest.raises(ValueError, match="latents does not require grad"):
        regularizer(g_net(ws), ws.detach())
    with pytest.raises(ValueError, match=r"images has 4 samples but latents has 3"):
        regularizer(g_net(ws), make_ws(shape=(3, NUM_WS, W_DIM)))
    with pytest.raises(ValueError, match=r"images must be \[N, C, H, W\].*\[4, 18\]"):
        regularizer(g_net(ws).flatten(1), ws)
    with pytest.raises(ValueError, match="latents must be"):
        regularizer(g_net(ws), ws.flatten()[:N].detach().requires_grad_())
    with pytest.raises(ValueError, match="images does not depend on latents"):
        regularizer(g_net(make_ws(2)), ws)
    with pytest.raises(TypeError, match="images must be"):
        regularizer(np.zeros((4, 2, 3, 3)), ws)


def test_an_empty_batch_is_an_error_and_leaves_the_running_mean_alone():
    # Its mean length is NaN: lerped into the running mean, it made every later penalty NaN.
    g_net = TinySynthesis()
    regularizer = PathLengthRegularizer().double()
    ws = make_ws()
    regularizer(g_net(ws), ws)
    before = regularizer.mean_length.clone()
    ws = make_ws(shape=(0, NUM_WS, W_DIM))
    with pytest.raises(ValueError, match=r"images has no samples \(shape \[0, 2, 3, 3\]\)"):
        regularizer(g_net(ws), ws)
    assert torch.equal(regularizer.mean_length, before)
    ws = make_ws(3)
    assert regularizer(g_net(ws), ws).isfinite()


def _path_length_on_rank(rank, world_size, init_file, out_dir):
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        g_net = TinySynthesis()
        regularizer = PathLengthRegularizer(decay=0.5).double()
        ws = make_ws(seed=10 + rank)
        ours(regularizer, g_net(ws), ws, noise_seed=rank)
        torch.save(regularizer.mean_length, os.path.join(out_dir, f"rank{rank}.pt"))
        # A deep copy (of a model or loss holding it) shares the group, which cannot be copied, and
        # averages over the same ranks.
        grouped = PathLengthRegularizer(decay=0.5, process_group=torch.distributed.group.WORLD).double()
        copied = copy.deepcopy(grouped)
        assert copied.process_group is grouped.process_group
        ours(copied, g_net(ws), ws, noise_seed=rank)
        torch.save(copied.mean_length, os.path.join(out_dir, f"copy{rank}.pt"))
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
@pytest.mark.xdist_group("distributed")  # one gloo job at a time under make test's workers
def test_running_mean_is_averaged_over_ranks():
    with tempfile.TemporaryDirectory() as out_dir:
        torch.multiprocessing.spawn(_path_length_on_rank, args=(2, os.path.join(out_dir, "init"), out_dir), nprocs=2)
        means = [torch.load(os.path.join(out_dir, f"rank{rank}.pt")) for rank in range(2)]
        copies = [torch.load(os.path.join(out_dir, f"copy{rank}.pt")) for rank in range(2)]
    assert [float(m) for m in copies] == [float(m) for m in means]
    g_net = TinySynthesis()
    batch_means = []
    for rank in range(2):
        ws = make_ws(seed=10 + rank)
        _, batch_mean = textbook(g_net(ws), ws, 0.0, 1.0, noise_seed=rank)
        batch_means.append(float(batch_mean))
    assert batch_means[0] != pytest.approx(batch_means[1])
    for mean in means:
        assert float(mean) == pytest.approx(0.5 * (batch_means[0] + batch_means[1]) / 2, rel=1e-12)


@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
def test_under_no_grad_or_inference_mode_names_the_grad_mode_and_keeps_the_mean(mode):
    # It used to say "images does not depend on latents", blaming arguments that were fine.
    torch.manual_seed(0)
    plr = PathLengthRegularizer()
    weight = torch.randn(3, 12)
    latents = torch.randn(4, 3, requires_grad=True)
    expected = "needs autograd, but it was called under " + (
        "torch.no_grad" if mode is torch.no_grad else "torch.inference_mode"
    )
    with mode(), pytest.raises(RuntimeError, match=expected):
        plr((latents @ weight).reshape(4, 3, 2, 2), latents)
    assert plr.mean_length.item() == 0.0
