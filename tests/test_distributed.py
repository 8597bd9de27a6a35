"""Data parallelism with real processes: gloo on CPU, 2 and 3 ranks on 127.0.0.1.

One spawned group of 3 processes runs every scenario below in turn, on all 3 ranks and on a 2-rank
subgroup (spawning is the slow part, and the subgroup also exercises the functions' group argument),
and a few on the subgroup of global ranks 1 and 2, whose group ranks are not the global ones and
which global rank 0 is outside of; each rank records per scenario whether it passed, and one pytest
test per scenario and world size reads the records. Training scenarios train a discriminator with
each penalty helper, wrapped in DistributedDataParallel or with
gan_kernels.distributed.all_reduce_gradients, and check after every step that all ranks hold bitwise
identical parameters and buffers (spectral norm's u, v) and that rank 0's equal, to float64
round-off, those of one process that ran the same steps on the concatenated batch with the same random
draws (minibatch stddev grouping each rank's slice, as the ranks do, or the whole batch for
MinibatchStd(process_group=)). The generator scenarios do the same for a StyleGAN-like G trained
with the path-length penalty (in its loss, or lazily on its own): each rank draws its own noise, and
the regulariser's running mean must be bitwise identical on every rank and equal one process's on
the concatenated batch and noise.
"""

import copy
import datetime
import json
import os
import re
import socket
import time
import traceback

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

import gan_kernels
from gan_kernels import penalties
from gan_kernels.distributed import all_gather_batch, all_reduce_gradients, broadcast_state, global_std
from gan_kernels.nn import EqualizedConv2d, EqualizedLinear, MinibatchStd, PixelNorm, batch_spectral_norm, spectral_norm
from gan_kernels.stabilizers import GeneratorEMA

from helpers import TOLERANCES

# Under pytest-xdist (make test), --dist loadgroup keeps this module on one worker, which spawns the
# group once for all of its tests.
pytestmark = pytest.mark.xdist_group("distributed")

WORLD_SIZES = [2, 3]
BATCH_PER_RANK = 4
GROUP_SIZE = 4  # minibatch stddev's; BATCH_PER_RANK is a multiple of it, so each rank's batch has whole groups
STEPS = 3
LAZY_INTERVAL = 2
COLLECTIVE_TIMEOUT_S = 30
GROUP_DEADLINE_S = 240  # for the spawned group running every scenario


# ---- models and data --------------------------------------------------------------------------


def equalized_discriminator(process_group=None):
    """StyleGAN-like: equalized-LR layers, a pixel norm and the minibatch-stddev epilogue (grouping
    each rank's batch, or with ``process_group`` the whole batch across ranks)."""
    return torch.nn.Sequential(
        EqualizedConv2d(3, 8, 3, activation="lrelu"),
        PixelNorm(),
        torch.nn.AvgPool2d(2),
        MinibatchStd(group_size=GROUP_SIZE, process_group=process_group),
        EqualizedConv2d(9, 8, 3, activation="lrelu"),
        torch.nn.Flatten(),
        EqualizedLinear(8 * 4 * 4, 1),
    ).double()


def spectral_discriminator():
    """SNGAN-like: spectral norm on every layer."""
    return torch.nn.Sequential(
        spectral_norm(torch.nn.Conv2d(3, 8, 3, padding=1)),
        torch.nn.LeakyReLU(0.2),
        spectral_norm(torch.nn.Conv2d(8, 8, 4, stride=2, padding=1)),
        torch.nn.LeakyReLU(0.2),
        torch.nn.Flatten(),
        spectral_norm(torch.nn.Linear(8 * 4 * 4, 1)),
    ).double()


def build_discriminator(kind, seed, group=None):
    """``group``: the ranks' process group, for the parallel side of the cross-rank minibatch
    stddev; None for one process, where grouping the concatenated batch needs no group."""
    torch.manual_seed(seed)
    if kind == "equalized":
        return equalized_discriminator()
    if kind == "equalized_cross_rank":
        return equalized_discriminator(process_group=group)
    model = spectral_discriminator()
    if kind == "spectral_batched":
        batch_spectral_norm(model)
    return model


def rank_batch(step, rank):
    """The reals and fakes rank ``rank`` sees at ``step``: every process can make every rank's."""
    gen = torch.Generator().manual_seed(1000 * step + rank)
    real = torch.randn(BATCH_PER_RANK, 3, 8, 8, dtype=torch.float64, generator=gen)
    fake = torch.randn(BATCH_PER_RANK, 3, 8, 8, dtype=torch.float64, generator=gen)
    return real, fake


def penalty_generator(rank):
    """The generator of rank ``rank``'s penalty draws (WGAN-GP's eps, DRAGAN's perturbation)."""
    return torch.Generator().manual_seed(7 + rank)


def grouped_by_rank(x, world_size):
    """The concatenated batch reordered so that StyleGAN's strided minibatch-stddev grouping of one
    process (sample i with i + N/G, ...) groups each rank's samples as that rank did: rank r's local
    sample m * (n/G) + i goes to m * (N/G) + r * (n/G) + i."""
    per_group = BATCH_PER_RANK // GROUP_SIZE
    ranks_first = x.reshape(world_size, GROUP_SIZE, per_group, *x.shape[1:])
    return ranks_first.transpose(0, 1).reshape(x.shape)


def adversarial_loss(D, real, fake):
    return torch.nn.functional.softplus(D(fake)).mean() + torch.nn.functional.softplus(-D(real)).mean()


def adversarial_loss_and_r1(D, real, fake, gamma):
    """The adversarial loss plus R1 from the same logits of the reals (one forward fewer)."""
    fake_logits = D(fake)
    x = real.detach().requires_grad_()
    logits = D(x)
    r1 = gan_kernels.gradient_penalty(logits, x, center=0.0).mean()
    return (
        torch.nn.functional.softplus(fake_logits).mean() + torch.nn.functional.softplus(-logits).mean() + gamma / 2 * r1
    )


# ---- one training step, data-parallel and in one process --------------------------------------

# r1_reused_logits: StyleGAN2's R1 on the logits of the adversarial loss's own forward of the reals.
PENALTIES = ["wgan_gp", "r1", "r2", "dragan", "zero_centered_gp", "lazy_r1", "r1_reused_logits"]
WEIGHTS = {
    "wgan_gp": 10.0,
    "r1": 1.0,
    "r2": 1.0,
    "dragan": 10.0,
    "zero_centered_gp": 5.0,
    "lazy_r1": 1.0,
    "r1_reused_logits": 1.0,
}


def parallel_step(D, penalty, step, real, fake, gen, group):
    """What a user writes on each rank: the library helper on the rank's own batch. Lazy R1 is
    backpropagated on its own, as StyleGAN2 does."""
    weight = WEIGHTS[penalty]
    if penalty == "r1_reused_logits":
        loss = adversarial_loss_and_r1(D, real, fake, weight)
    else:
        loss = adversarial_loss(D, real, fake)
    if penalty == "wgan_gp":
        loss = loss + penalties.wgan_gp(D, real, fake, weight, generator=gen)
    elif penalty == "r1":
        loss = loss + penalties.r1(D, real, weight)
    elif penalty == "r2":
        loss = loss + penalties.r2(D, fake, weight)
    elif penalty == "dragan":
        loss = loss + penalties.dragan(D, real, weight, std=global_std(real, group), generator=gen)
    elif penalty == "zero_centered_gp":
        loss = loss + penalties.zero_centered_gp(D, real, fake, weight, generator=gen)
    loss.backward()
    if penalty == "lazy_r1":
        lazy = penalties.LazyRegularizer(LAZY_INTERVAL)
        reg = lazy(step, penalties.r1, D, real, weight)
        if reg is not None:
            reg.backward()


def single_process_step(D, penalty, step, reals, fakes, gens, per_rank_groups):
    """One process on the concatenated batch, from the penalties' definitions (DESIGN.md), at the
    points each rank's generator drew; minibatch stddev groups within each rank's slice if
    ``per_rank_groups``, else across the whole batch."""
    world_size = len(reals)

    def ordered(x):
        return grouped_by_rank(x, world_size) if per_rank_groups else x

    real, fake = (ordered(torch.cat(t)) for t in (reals, fakes))
    weight = WEIGHTS[penalty]

    def penalty_at(points, center):
        x = ordered(points).requires_grad_()
        return weight * gan_kernels.gradient_penalty(D(x), x, center).mean()

    if penalty == "r1_reused_logits":
        loss = adversarial_loss_and_r1(D, real, fake, weight)
    else:
        loss = adversarial_loss(D, real, fake)
    if penalty in ("wgan_gp", "zero_centered_gp"):
        points = torch.cat([penalties.interpolates(r, f, g) for r, f, g in zip(reals, fakes, gens)])
        loss = loss + penalty_at(points, 1.0 if penalty == "wgan_gp" else 0.0)
    elif penalty == "r1":
        loss = loss + penalty_at(torch.cat(reals), 0.0) / 2
    elif penalty == "r2":
        loss = loss + penalty_at(torch.cat(fakes), 0.0) / 2
    elif penalty == "dragan":
        std = torch.cat(reals).std(correction=0)
        loss = loss + penalty_at(
            torch.cat([penalties.dragan_points(r, std=std, generator=g) for r, g in zip(reals, gens)]), 1.0
        )
    loss.backward()
    if penalty == "lazy_r1" and step % LAZY_INTERVAL == 0:
        (LAZY_INTERVAL * penalty_at(torch.cat(reals), 0.0) / 2).backward()


def optimizer(D):
    # SGD, not Adam: Adam's first steps divide by |g|, so a gradient that is 0 up to round-off
    # would move by the full learning rate in either direction.
    return torch.optim.SGD(D.parameters(), lr=0.05, momentum=0.9)


def state(module):
    """Parameters and buffers by name (spectral norm's _u, _v are buffers)."""
    return dict(module.named_parameters()) | dict(module.named_buffers())


def assert_identical_on_every_rank(tensors, what, group):
    flat = torch.cat([t.detach().flatten() for t in tensors.values()])
    gathered = [torch.empty_like(flat) for _ in range(dist.get_world_size(group))]
    dist.all_gather(gathered, flat, group=group)
    for rank, other in enumerate(gathered):
        assert torch.equal(other, flat), f"{what}: rank {rank} differs from rank {dist.get_rank(group)}"


def single_process_states(model_kind, penalty, world_size):
    """The parameters and buffers of one process after each of STEPS steps on the concatenated
    batches. Computed once per (model, penalty, world size): the DDP and all_reduce_gradients
    scenarios share it."""
    key = (model_kind, penalty, world_size)
    if key not in _single_process_states:
        D = build_discriminator(model_kind, seed=0)
        opt = optimizer(D)
        gens = [penalty_generator(r) for r in range(world_size)]
        states = []
        for step in range(STEPS):
            batches = [rank_batch(step, r) for r in range(world_size)]
            opt.zero_grad()
            single_process_step(
                D,
                penalty,
                step,
                [b[0] for b in batches],
                [b[1] for b in batches],
                gens,
                per_rank_groups=model_kind != "equalized_cross_rank",
            )
            opt.step()
            states.append({name: t.detach().clone() for name, t in state(D).items()})
        _single_process_states[key] = states
    return _single_process_states[key]


_single_process_states = {}


def check_step(ours, expected_states, step, rank, group, mismatches):
    """After a step: ``ours`` (name -> tensor) bitwise equal on every rank, and on rank 0 equal to the
    single process's state after that step (``expected_states``, rank 0's only) to float64 round-off;
    differences are collected in ``mismatches``."""
    assert_identical_on_every_rank(ours, f"step {step}", group)
    if rank == 0:
        expected = expected_states[step]
        assert ours.keys() == expected.keys()
        for name in expected:
            try:
                torch.testing.assert_close(ours[name], expected[name], **TOLERANCES[torch.float64])
            except AssertionError as e:
                mismatches.append(f"step {step}, {name}: {e}")


def train_and_compare(model_kind, wrapper, penalty, group):
    rank, world_size = dist.get_rank(group), dist.get_world_size(group)
    # Every rank builds its own random model; DDP and broadcast_state must make them rank 0's.
    local = build_discriminator(model_kind, seed=rank, group=group)
    if wrapper == "ddp":
        D = DistributedDataParallel(local, process_group=group)
    else:
        broadcast_state(local, group=group)
        D = local
    opt = optimizer(D)
    gen = penalty_generator(rank)
    # Only rank 0 compares (the ranks are checked to be identical), and it keeps training after a
    # mismatch and raises at the end, so that every rank runs the same collectives.
    expected_states = single_process_states(model_kind, penalty, world_size) if rank == 0 else None
    mismatches = []
    for step in range(STEPS):
        real, fake = rank_batch(step, rank)
        opt.zero_grad()
        parallel_step(D, penalty, step, real, fake, gen, group)
        if wrapper == "all_reduce":
            all_reduce_gradients(local, group)
        opt.step()
        check_step(state(local), expected_states, step, rank, group, mismatches)
    assert not mismatches, "differs from one process on the whole batch:\n" + "\n".join(mismatches)


# ---- the generator with StyleGAN2's path-length penalty ---------------------------------------

Z_DIM, W_DIM, NUM_WS, G_CHANNELS = 4, 4, 2, 4
PATH_LENGTH_WEIGHT = 2.0  # StyleGAN2's
# Far above StyleGAN2's 0.01, so that the running mean is a sizeable part of the centre from the
# first step and a running mean that differs between ranks (or from one process) shows.
PATH_LENGTH_DECAY = 0.3


class TinyStyleGenerator(torch.nn.Module):
    """StyleGAN-like: a mapping layer z -> w, broadcast to NUM_WS ws that modulate the channels of
    a learned constant before and after a 3x3 convolution, and a 1x1 toRGB. Returns the images
    and the ws, which the path-length penalty differentiates with respect to. toRGB's bias is
    the parameter the penalty does not reach (the images' derivative does not depend on it)."""

    def __init__(self):
        super().__init__()
        self.mapping = EqualizedLinear(Z_DIM, W_DIM, activation="lrelu")
        self.const = torch.nn.Parameter(torch.randn(G_CHANNELS, 4, 4))
        self.styles = torch.nn.ModuleList([EqualizedLinear(W_DIM, G_CHANNELS, bias_init=1) for _ in range(NUM_WS)])
        self.conv = EqualizedConv2d(G_CHANNELS, G_CHANNELS, 3, activation="lrelu")
        self.to_rgb = EqualizedConv2d(G_CHANNELS, 3, 1)

    def forward(self, z):
        ws = self.mapping(z).unsqueeze(1).repeat(1, NUM_WS, 1)
        x = self.const * self.styles[0](ws[:, 0])[:, :, None, None]
        x = self.conv(x) * self.styles[1](ws[:, 1])[:, :, None, None]
        return self.to_rgb(x), ws


def build_generator(seed):
    torch.manual_seed(seed)
    return TinyStyleGenerator().double()


def fixed_critic():
    """G's adversarial loss needs a D; a fixed one (not trained, the same on every rank) keeps the
    scenarios about G."""
    torch.manual_seed(123)
    critic = torch.nn.Sequential(
        EqualizedConv2d(3, 4, 3, activation="lrelu"), torch.nn.Flatten(), EqualizedLinear(4 * 4 * 4, 1)
    ).double()
    return critic.requires_grad_(False)


def rank_latents(step, rank):
    """The z rank ``rank`` draws at ``step``: every process can make every rank's."""
    return torch.randn(
        BATCH_PER_RANK, Z_DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(2000 * step + rank)
    )


def path_length_noise_generator(rank):
    """The generator of rank ``rank``'s path-length noise y."""
    return torch.Generator().manual_seed(50 + rank)


# path_length: the penalty added to G's adversarial loss, one backward. lazy_path_length:
# StyleGAN2's way, its own forward of G and its own backward every LAZY_INTERVAL steps.
G_PENALTIES = ["path_length", "lazy_path_length"]


def parallel_generator_step(G, critic, plr, penalty, step, z, gen):
    """What a user writes on each rank: the regulariser on the rank's own batch and noise."""
    images, ws = G(z)
    loss = torch.nn.functional.softplus(-critic(images)).mean()
    if penalty == "path_length":
        loss = loss + PATH_LENGTH_WEIGHT * plr(images, ws, generator=gen)
    loss.backward()
    lazy = penalties.LazyRegularizer(LAZY_INTERVAL)
    if penalty == "lazy_path_length" and lazy.due(step):
        images, ws = G(z)
        (PATH_LENGTH_WEIGHT * lazy(step, plr, images, ws, generator=gen)).backward()


def textbook_path_length(images, ws, noise, mean_before):
    """StyleGAN2's penalty on the concatenated batch, written out (as tests/test_path_length.py
    does): per-sample lengths, the running mean updated with the whole batch's mean length (the
    mean of the ranks' means, the batches being equal), the penalty a mean over the whole batch
    (the mean of the ranks' penalties, as DDP's and all_reduce_gradients' averaging makes it)."""
    (g,) = torch.autograd.grad((images * noise).sum(), ws, create_graph=True)
    lengths = g.square().sum(2).mean(1).sqrt()
    mean = mean_before + PATH_LENGTH_DECAY * (lengths.mean().detach() - mean_before)
    return (lengths - mean).square().mean(), mean


def single_process_generator_states(penalty, world_size):
    """G's parameters and the running mean after each of STEPS steps of one process on the
    concatenated batches, with each rank's noise drawn from that rank's generator and
    concatenated in rank order. Shared by the DDP and all_reduce_gradients scenarios."""
    key = ("generator", penalty, world_size)
    if key not in _single_process_states:
        G, critic = build_generator(seed=0), fixed_critic()
        opt = optimizer(G)
        gens = [path_length_noise_generator(r) for r in range(world_size)]
        mean_length = torch.zeros((), dtype=torch.float64)

        def penalty_of_the_whole_batch(images, ws):
            nonlocal mean_length
            rank_shape = (BATCH_PER_RANK, *images.shape[1:])
            noise = torch.cat([torch.randn(rank_shape, dtype=images.dtype, generator=g) for g in gens])
            noise = noise / (images.shape[2] * images.shape[3]) ** 0.5
            value, mean_length = textbook_path_length(images, ws, noise, mean_length)
            return PATH_LENGTH_WEIGHT * value

        states = []
        for step in range(STEPS):
            z = torch.cat([rank_latents(step, r) for r in range(world_size)])
            opt.zero_grad()
            images, ws = G(z)
            loss = torch.nn.functional.softplus(-critic(images)).mean()
            if penalty == "path_length":
                loss = loss + penalty_of_the_whole_batch(images, ws)
            loss.backward()
            if penalty == "lazy_path_length" and step % LAZY_INTERVAL == 0:
                (LAZY_INTERVAL * penalty_of_the_whole_batch(*G(z))).backward()
            opt.step()
            states.append(
                {name: t.detach().clone() for name, t in state(G).items()} | {"mean_length": mean_length.clone()}
            )
        _single_process_states[key] = states
    return _single_process_states[key]


def train_generator_and_compare(wrapper, penalty, group):
    rank, world_size = dist.get_rank(group), dist.get_world_size(group)
    local = build_generator(seed=rank)  # DDP and broadcast_state must make every rank's rank 0's
    if wrapper == "ddp":
        G = DistributedDataParallel(local, process_group=group)
    else:
        broadcast_state(local, group=group)
        G = local
    critic = fixed_critic()
    plr = penalties.PathLengthRegularizer(PATH_LENGTH_DECAY, process_group=group).double()
    opt = optimizer(G)
    gen = path_length_noise_generator(rank)
    expected_states = single_process_generator_states(penalty, world_size) if rank == 0 else None
    mismatches = []
    for step in range(STEPS):
        opt.zero_grad()
        parallel_generator_step(G, critic, plr, penalty, step, rank_latents(step, rank), gen)
        if wrapper == "all_reduce":
            all_reduce_gradients(local, group)
        opt.step()
        check_step(state(local) | {"mean_length": plr.mean_length}, expected_states, step, rank, group, mismatches)
    assert not mismatches, "differs from one process on the whole batch:\n" + "\n".join(mismatches)


# ---- scenarios not about training ------------------------------------------------------------


def broadcast_state_copies_parameters_and_buffers(group):
    rank, world_size = dist.get_rank(group), dist.get_world_size(group)
    src = world_size - 1  # the groups are ranks 0 .. n-1, so group and global ranks agree
    model = build_discriminator("spectral", seed=rank)
    source = build_discriminator("spectral", seed=src)  # what rank src holds
    u_differed = not torch.equal(model[0].parametrizations.weight[0]._u, source[0].parametrizations.weight[0]._u)
    broadcast_state(model, src=src, group=group)
    assert u_differed or rank == src
    ours, expected = state(model), state(source)
    assert ours.keys() == expected.keys()
    for name in expected:
        assert torch.equal(ours[name], expected[name]), name


def all_reduce_gradients_agrees_on_missing_gradients(group):
    rank, world_size = dist.get_rank(group), dist.get_world_size(group)
    model = torch.nn.ParameterDict(
        {
            "everywhere": torch.nn.Parameter(torch.zeros(3, dtype=torch.float64)),
            "rank0_only": torch.nn.Parameter(torch.zeros(2, dtype=torch.float64)),
            "nowhere": torch.nn.Parameter(torch.zeros(4, dtype=torch.float64)),
            "float32": torch.nn.Parameter(torch.zeros(2, dtype=torch.float32)),
        }
    )

    def grad_of(name, r):
        return torch.arange(1.0, 1.0 + model[name].numel(), dtype=model[name].dtype) * (r + 1)

    for name in ("everywhere", "float32"):
        model[name].grad = grad_of(name, rank)
    if rank == 0:
        model["rank0_only"].grad = grad_of("rank0_only", 0)
    all_reduce_gradients(model, group)
    for name in ("everywhere", "float32"):
        expected = sum(grad_of(name, r) for r in range(world_size)) / world_size
        torch.testing.assert_close(model[name].grad, expected, **TOLERANCES[model[name].dtype])
    torch.testing.assert_close(
        model["rank0_only"].grad, grad_of("rank0_only", 0) / world_size, **TOLERANCES[torch.float64]
    )
    assert model["nowhere"].grad is None


def global_std_is_the_std_of_the_concatenated_batch(group):
    rank, world_size = dist.get_rank(group), dist.get_world_size(group)

    def values(r):  # a different number of samples on each rank, far from zero mean
        return 100.0 + torch.randn(r + 1, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(r))

    expected = torch.cat([values(r) for r in range(world_size)]).std(correction=0)
    torch.testing.assert_close(global_std(values(rank), group), expected, **TOLERANCES[torch.float64])


def ddp_with_static_graph_is_refused(group):
    D = DistributedDataParallel(build_discriminator("equalized", seed=0), process_group=group, static_graph=True)
    real, _ = rank_batch(0, dist.get_rank(group))
    with pytest.raises(ValueError, match="static_graph=True"):
        penalties.r1(D, real, 1.0)


def bad_arguments_name_themselves(group):
    with pytest.raises(ValueError, match=r"src must be a rank in \[0, \d\), got 7"):
        broadcast_state(torch.nn.Linear(2, 2), src=7)
    with pytest.raises(ValueError, match="module is a DistributedDataParallel, whose backward already averages"):
        all_reduce_gradients(DistributedDataParallel(torch.nn.Linear(2, 2), process_group=group), group)
    with pytest.raises(TypeError, match="module must be a torch.nn.Module, got Tensor"):
        all_reduce_gradients(torch.zeros(2))
    # A copy of the DDP wrapper broadcast buffers in every forward: sampling on one rank hung.
    with pytest.raises(ValueError, match=re.escape("G is a DistributedDataParallel: build the average from")):
        GeneratorEMA(DistributedDataParallel(spectral_norm(torch.nn.Linear(2, 2)), process_group=group), 0.9)
    # Refused on the rank itself, before the collective the other ranks would wait in.
    with pytest.raises(ValueError, match=r"x must be a 4-D tensor \[N, C, H, W\], got shape \[4, 3\]"):
        MinibatchStd(GROUP_SIZE, process_group=group)(torch.randn(4, 3))
    with pytest.raises(TypeError, match="x must be a torch.Tensor with a batch dimension"):
        all_gather_batch(torch.tensor(1.0), group)
    # A list of ranks is not a group (torch said "unhashable type: 'list'").
    expected = (
        "group must be a torch.distributed process group (from torch.distributed.new_group) or None, got list [0, 1]"
    )
    with pytest.raises(TypeError, match=re.escape(expected)):
        all_reduce_gradients(torch.nn.Linear(2, 2), [0, 1])
    with pytest.raises(TypeError, match=re.escape(expected.replace("group", "process_group", 1))):
        MinibatchStd(2, process_group=[0, 1])(torch.randn(2, 3, 2, 2))


def all_reduce_gradients_averages_fp16_without_overflow(group):
    # 40000 on every rank averages to 40000; their sum, 80000 or more, is inf in float16. DDP too
    # divides before it sums.
    model = torch.nn.Linear(1, 2, bias=False).half()
    model.weight.grad = torch.full_like(model.weight, 40000.0)
    all_reduce_gradients(model, group)
    assert torch.equal(model.weight.grad, torch.full_like(model.weight, 40000.0)), model.weight.grad


def all_gather_batch_refuses_unequal_tensors(group):
    """A batch size or dtype differing between ranks raises the same error on every rank (gloo
    otherwise gives the larger rank uninitialised rows and aborts the smaller rank's process)."""
    rank, world_size = dist.get_rank(group), dist.get_world_size(group)
    described = ", ".join(f"shape [{r + 1}, 3] and dtype torch.float64 on group rank {r}" for r in range(world_size))
    expected = "x must have the same shape and dtype on every rank of group, got " + described
    with pytest.raises(ValueError, match=re.escape(expected) + "$"):
        all_gather_batch(torch.randn(rank + 1, 3, dtype=torch.float64), group)
    dtype = torch.float32 if rank == 0 else torch.float64
    expected = (
        "shape [2, 3] and dtype torch.float32 on group rank 0, shape [2, 3] and dtype torch.float64 on group rank 1"
    )
    with pytest.raises(ValueError, match=re.escape(expected)):
        all_gather_batch(torch.randn(2, 3, dtype=dtype), group)
    layer = MinibatchStd(group_size=None, process_group=group)
    with pytest.raises(ValueError, match="x must have the same shape and dtype on every rank of group"):
        layer(torch.randn(GROUP_SIZE + rank, 3, 2, 2, dtype=torch.float64))


def path_length_mean_weighs_every_sample_alike(group):
    """Rank r holds r + 1 samples: the running mean moves towards the mean length of the
    concatenated batch, not towards the mean of the ranks' means."""
    rank, world_size = dist.get_rank(group), dist.get_world_size(group)
    weight = torch.randn(5, 2 * 3 * 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))

    def lengths_and_penalty_inputs(r):
        latents = torch.randn(r + 1, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(r + 1))
        latents.requires_grad_()
        images = (latents @ weight).view(r + 1, 2, 3, 3)
        noise = torch.randn(images.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(100 + r))
        # images = latents @ weight, so g_i = weight @ y_i with y_i the sample's noise / sqrt(H * W).
        lengths = (noise.flatten(1) / 3.0 @ weight.T).norm(dim=1)
        return latents, images, lengths

    plr = penalties.PathLengthRegularizer(decay=0.5, process_group=group).double()
    latents, images, _ = lengths_and_penalty_inputs(rank)
    plr(images, latents, generator=torch.Generator().manual_seed(100 + rank))
    expected = 0.5 * torch.cat([lengths_and_penalty_inputs(r)[2] for r in range(world_size)]).mean()
    torch.testing.assert_close(plr.mean_length, expected, **TOLERANCES[torch.float64])


SCENARIOS = {
    "broadcast_state": broadcast_state_copies_parameters_and_buffers,
    "all_reduce_gradients_missing": all_reduce_gradients_agrees_on_missing_gradients,
    "global_std": global_std_is_the_std_of_the_concatenated_batch,
    "static_graph_refused": ddp_with_static_graph_is_refused,
    "bad_arguments": bad_arguments_name_themselves,
    "all_reduce_gradients_fp16": all_reduce_gradients_averages_fp16_without_overflow,
    "all_gather_batch_unequal": all_gather_batch_refuses_unequal_tensors,
    "path_length_unequal_batches": path_length_mean_weighs_every_sample_alike,
}
MODELS = ["equalized", "equalized_cross_rank", "spectral", "spectral_batched"]
# all_reduce_gradients averages whatever the backward produced, whichever the penalty: every penalty
# on one model, and on the others one backward (WGAN-GP) and two before one all-reduce (lazy R1),
# keep the test well under a minute on 2 cores.
ALL_REDUCE_PENALTIES = {"equalized": PENALTIES}
for _model in MODELS:
    for _penalty in PENALTIES:
        SCENARIOS[f"train-{_model}-ddp-{_penalty}"] = lambda group, m=_model, p=_penalty: train_and_compare(
            m, "ddp", p, group
        )
    for _penalty in ALL_REDUCE_PENALTIES.get(_model, ["wgan_gp", "lazy_r1"]):
        SCENARIOS[f"train-{_model}-all_reduce-{_penalty}"] = lambda group, m=_model, p=_penalty: train_and_compare(
            m, "all_reduce", p, group
        )
for _wrapper in ("ddp", "all_reduce"):
    for _penalty in G_PENALTIES:
        SCENARIOS[f"train-generator-{_wrapper}-{_penalty}"] = lambda group, w=_wrapper, p=_penalty: (
            train_generator_and_compare(w, p, group)
        )


# ---- on a subgroup whose ranks are not the global ones: global ranks 1 and 2 of 3 ------------

OFFSET_RANKS = [1, 2]
OFFSET_KEY = "ranks1-2"


def outside_the_group_every_helper_refuses(group):
    """On a process outside ``group`` torch's collectives return at once without doing anything, so
    an average divided by get_world_size(group), -1 there, negated the gradients and global_std gave
    the local std, silently. Every helper refuses instead."""
    if dist.get_rank() in OFFSET_RANKS:
        return
    # new_group gives a process outside the group the integer GroupMember.NON_GROUP_MEMBER, not a group.
    assert group == dist.GroupMember.NON_GROUP_MEMBER
    expected = "group does not include this process (global rank 0): call this only on the ranks of group"
    model = torch.nn.Linear(2, 1).double()
    model.weight.grad = torch.ones_like(model.weight)
    with pytest.raises(ValueError, match=re.escape(expected)):
        all_reduce_gradients(model, group)
    assert torch.equal(model.weight.grad, torch.ones_like(model.weight))
    with pytest.raises(ValueError, match=re.escape(expected)):
        broadcast_state(model, src=1, group=group)
    with pytest.raises(ValueError, match=re.escape(expected)):
        global_std(torch.randn(3), group)
    with pytest.raises(ValueError, match=re.escape(expected)):
        all_gather_batch(torch.randn(2, 3), group)
    expected = expected.replace("group", "process_group")
    with pytest.raises(ValueError, match=re.escape(expected)):
        MinibatchStd(2, process_group=group)(torch.randn(2, 3, 2, 2))
    plr = penalties.PathLengthRegularizer(process_group=group)
    latents = torch.randn(2, 3, requires_grad=True)
    with pytest.raises(ValueError, match=re.escape(expected)):
        plr(latents[:, :, None, None] * torch.ones(2, 3, 2, 2), latents)
    assert plr.mean_length.item() == 0.0


def broadcast_state_takes_a_global_src(group):
    if dist.get_rank() not in OFFSET_RANKS:
        return
    source_rank = 2  # group rank 1
    model = build_discriminator("spectral", seed=dist.get_rank())
    broadcast_state(model, src=source_rank, group=group)
    expected = state(build_discriminator("spectral", seed=source_rank))
    ours = state(model)
    for name in expected:
        assert torch.equal(ours[name], expected[name]), name
    # Global rank 0 is no member; group rank 0 (global rank 1) is not what src=0 means.
    expected = "src=0 is not a rank of group, whose global ranks are [1, 2]: src is a global rank"
    with pytest.raises(ValueError, match=re.escape(expected)):
        broadcast_state(model, src=0, group=group)


def cross_rank_minibatch_std_keeps_the_group_ranks_rows(group):
    """Global rank 1 is group rank 0: its rows are the first of the gathered batch."""
    if dist.get_rank() not in OFFSET_RANKS:
        return

    def batch(global_rank):
        return torch.randn(2, 3, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(global_rank))

    x = batch(dist.get_rank()).requires_grad_()
    y = MinibatchStd(group_size=4, process_group=group)(x)
    whole = torch.cat([batch(r) for r in OFFSET_RANKS]).requires_grad_()
    expected = gan_kernels.minibatch_std(whole, 4)
    rows = slice(2 * dist.get_rank(group), 2 * dist.get_rank(group) + 2)
    torch.testing.assert_close(y, expected[rows], **TOLERANCES[torch.float64])
    # Every rank's loss, summed: the gradient for this rank's rows.
    y.square().sum().backward()
    expected.square().sum().backward()
    torch.testing.assert_close(x.grad, whole.grad[rows], **TOLERANCES[torch.float64])


def cross_rank_minibatch_std_deep_copies_sharing_its_group(group):
    """A D snapshot (StyleGAN2-ADA deep-copies D) failed: "cannot pickle ... ProcessGroup". The
    copy shares the group, a handle to the communicator, and computes what the original does."""
    if dist.get_rank() not in OFFSET_RANKS:
        return
    layer = MinibatchStd(group_size=4, process_group=group)
    snapshot = copy.deepcopy(torch.nn.Sequential(layer))[0]
    assert snapshot is not layer and snapshot.process_group is group
    x = torch.randn(2, 3, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(dist.get_rank()))
    assert torch.equal(snapshot(x), layer(x))


OFFSET_SCENARIOS = {
    "outside_the_group": outside_the_group_every_helper_refuses,
    "broadcast_state_global_src": broadcast_state_takes_a_global_src,
    "minibatch_std_offset_group": cross_rank_minibatch_std_keeps_the_group_ranks_rows,
    "minibatch_std_deepcopy": cross_rank_minibatch_std_deep_copies_sharing_its_group,
}


# ---- the spawned group -------------------------------------------------------------------------


def _worker(rank, port, results_dir):
    torch.set_num_threads(1)
    world_size = max(WORLD_SIZES)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=COLLECTIVE_TIMEOUT_S),
    )
    # new_group is a collective of all ranks, members or not.
    groups = {n: dist.new_group(list(range(n))) for n in WORLD_SIZES}
    offset_group = dist.new_group(OFFSET_RANKS)
    results = {}
    path = os.path.join(results_dir, f"rank{rank}.json")

    def run(key, scenario, group):
        try:
            scenario(group)
            results[key] = None
        except (Exception, pytest.fail.Exception):  # pytest.raises fails with a BaseException
            # Scenarios fail after their collectives, so the ranks stay in step; should one
            # not, the collective timeout ends the ranks' wait.
            results[key] = traceback.format_exc()
        finally:
            with open(path, "w") as f:
                json.dump(results, f)

    try:
        # On every rank: each scenario does what a member, and what a process outside, is to do.
        for name, scenario in OFFSET_SCENARIOS.items():
            run(f"{name}@{OFFSET_KEY}", scenario, offset_group)
        for n, group in groups.items():
            if rank >= n:
                continue
            for name, scenario in SCENARIOS.items():
                run(f"{name}@{n}", scenario, group)
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _loopback_interface():
    """The loopback interface's name, for gloo's GLOO_SOCKET_IFNAME (gloo otherwise binds to the
    address the host name resolves to, which need not be local)."""
    names = [name for _, name in socket.if_nameindex()]
    return next((name for name in ("lo", "lo0") if name in names), None)


def _run_group(results_dir):
    world_size = max(WORLD_SIZES)
    env = {"OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    interface = _loopback_interface()
    if interface is not None:
        env["GLOO_SOCKET_IFNAME"] = interface
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # inherited by the spawned processes
    try:
        context = mp.start_processes(
            _worker, args=(_free_port(), str(results_dir)), nprocs=world_size, join=False, start_method="spawn"
        )
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k)
            else:
                os.environ[k] = v
    deadline = time.monotonic() + GROUP_DEADLINE_S
    try:
        while not context.join(timeout=1):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the {world_size} processes did not finish within {GROUP_DEADLINE_S} s")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
            process.join()
    results = {}
    for rank in range(world_size):
        with open(os.path.join(results_dir, f"rank{rank}.json")) as f:
            results[rank] = json.load(f)
    return results


@pytest.fixture(scope="module")
def group_results(tmp_path_factory):
    return _run_group(tmp_path_factory.mktemp("distributed"))


@pytest.mark.parametrize("world_size", WORLD_SIZES, ids=lambda n: f"{n}procs")
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_scenario(group_results, scenario, world_size):
    failures = []
    for rank in range(world_size):
        outcome = group_results[rank].get(f"{scenario}@{world_size}", "not run (the process stopped before it)")
        if outcome is not None:
            failures.append(f"rank {rank}: {outcome}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("scenario", list(OFFSET_SCENARIOS))
def test_scenario_on_a_subgroup_of_other_ranks(group_results, scenario):
    failures = []
    for rank in range(max(WORLD_SIZES)):
        outcome = group_results[rank].get(f"{scenario}@{OFFSET_KEY}", "not run (the process stopped before it)")
        if outcome is not None:
            failures.append(f"rank {rank}: {outcome}")
    assert not failures, "\n".join(failures)


# ---- in this process, without a process group ---------------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        lambda: all_reduce_gradients(torch.nn.Linear(2, 2)),
        lambda: broadcast_state(torch.nn.Linear(2, 2)),
        lambda: global_std(torch.randn(3)),
    ],
    ids=["all_reduce_gradients", "broadcast_state", "global_std"],
)
def test_without_init_process_group_the_error_says_what_to_call(call):
    expected = r"torch.distributed is not initialized: call torch.distributed.init_process_group\(\)"
    with pytest.raises(RuntimeError, match=expected):
        call()


def test_global_std_refuses_integer_tensors():
    with pytest.raises(TypeError, match="x must be a floating-point torch.Tensor, got torch.int64"):
        global_std(torch.arange(3))
