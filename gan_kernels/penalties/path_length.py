"""StyleGAN2's path-length regulariser (Karras et al. 2020) for the generator, on the fused
per-sample penalty op."""

import math

import torch

from .. import _checks
from .._module_state import KeepsFullPrecision, SharesProcessGroup
from ..ops.gradient_penalty import per_sample_penalty
from .gradient import scaled_input_gradient


def _batch_mean(lengths, group):
    """The mean of ``lengths`` over the concatenated batch of the ranks of ``group`` (None: all
    ranks) when torch.distributed is initialised, else over ``lengths``: one all-reduce of their sum
    and count, so ranks holding different numbers of samples weigh each sample alike, as one process
    on the whole batch does (a mean of the ranks' means would not)."""
    distributed = torch.distributed
    if not (distributed.is_available() and distributed.is_initialized()):
        return lengths.mean()
    _checks.process_group_rank(group, "process_group")
    count = torch.tensor(float(lengths.numel()), dtype=lengths.dtype, device=lengths.device)
    sum_and_count = torch.stack([lengths.sum(), count])
    distributed.all_reduce(sum_and_count, group=group)
    return sum_and_count[0] / sum_and_count[1]


class PathLengthRegularizer(SharesProcessGroup, KeepsFullPrecision, torch.nn.Module):
    """``plr(images, latents)`` -> the path-length penalty ``mean_i (length_i - a)^2``, where

        y ~ N(0, I) / sqrt(H * W)                  (per image element; H * W: the pixels per channel)
        g = d(sum(images * y)) / d(latents)        (create_graph: the penalty trains G)
        length_i = sqrt(mean over the latent's middle dims of sum(g_i^2) over its last dim)
        a = a + decay * (mean_i length_i - a)      (updated before the penalty, as StyleGAN2)

    ``images`` [N, C, H, W] (any [N, C, ...]) must have been computed from ``latents`` [N, D] or
    [N, num_ws, D] (StyleGAN's ws), which must require grad. The running mean ``a`` is the buffer
    ``mean_length`` (in the state dict, float32), updated with the mean over the concatenated batch
    of the ranks of ``process_group`` (default: all ranks; each sample weighs alike when the ranks'
    batch sizes differ) when torch.distributed is initialised (every rank of the group must then
    call the regulariser on the same steps; ``copy.deepcopy`` shares the group, which cannot be
    copied); ``.double()`` makes it float64, while a conversion to
    float16 or bfloat16 (``.half()``, ``.to(device, torch.bfloat16)``) moves it but keeps its dtype,
    where ``decay`` times the change would mostly be under half an ulp and ``a`` would stop moving.

    The penalty is one call of the fused per-sample penalty op: with k the number of latent vectors
    per sample, ``(||g_i|| / sqrt(k) - a)^2 = (||g_i|| - a sqrt(k))^2 / k``, and the centre
    ``c = a sqrt(k)`` stays on the device (no host sync) by computing ``c^2 (||g_i / c|| - 1)^2``
    (``sum(g_i^2)`` while ``a`` is 0).
    ``a`` is a constant for autograd; StyleGAN2's code lets a gradient of relative size ``decay / N``
    reach the lengths through the updated mean. At zero gradients (a sample, or the whole batch) the
    penalty and its derivatives of every order are finite (the op defines the norm's derivative at 0
    as 0). Lazy regularisation: ``LazyRegularizer(4)(step, plr, images, latents)``; multiply by
    StyleGAN2's weight 2 yourself. ``scaler``: a ``torch.amp.GradScaler`` whose scaled loss the caller
    backpropagates, as for ``gradient_penalty``: g is taken of the scaled sum and unscaled (the
    noise's 1/sqrt(H * W) makes fp16 gradients small). A batch whose mean length is then inf or NaN
    (the scaled gradient overflowed: a step the scaler skips) leaves ``a`` as it was, while the
    penalty of that step stays non-finite; without an enabled scaler ``a`` takes it, as StyleGAN2's.
    The result includes ``0 * images`` (StyleGAN2's), so that a penalty backpropagated on its own
    through a DistributedDataParallel G gives every parameter a gradient for DDP to reduce.
    """

    def __init__(self, decay=0.01, process_group=None):
        super().__init__()
        self.decay = _checks.interval(decay, "decay", 0, 1)
        # The ranks that train G together: an all-reduce over all ranks would wait forever for
        # ranks outside a subgroup that never call the regulariser.
        self.process_group = process_group
        self.register_buffer("mean_length", torch.zeros((), dtype=torch.float32))

    def forward(self, images, latents, generator=None, scaler=None):
        _checks.check_floating(images, "images")
        _checks.check_floating(latents, "latents")
        if images.dim() < 3:
            raise ValueError(f"images must be [N, C, H, W] (or [N, C, ...]), got shape {list(images.shape)}")
        if latents.dim() < 2:
            raise ValueError(f"latents must be [N, D] or [N, ..., D], got shape {list(latents.shape)}")
        if images.shape[0] != latents.shape[0]:
            raise ValueError(
                f"images has {images.shape[0]} samples but latents has {latents.shape[0]} (shapes "
                f"{list(images.shape)} and {list(latents.shape)})"
            )
        # Before the running mean is touched: a batch mean over no samples is NaN, and lerp would
        # make every later penalty NaN.
        _checks.has_samples(images, "images")
        _checks.grad_enabled("the path-length penalty")
        if not latents.requires_grad:
            raise ValueError("latents does not require grad: call latents.requires_grad_() before computing images")
        if not images.requires_grad:
            raise ValueError("images does not depend on latents (images.requires_grad is False)")
        if self.mean_length.device != latents.device:
            raise ValueError(
                f"PathLengthRegularizer is on {self.mean_length.device} but latents is on {latents.device}: "
                "move it with .to(device)"
            )
        pixels = math.prod(images.shape[2:])
        noise = torch.randn(
            images.shape, dtype=images.dtype, device=images.device, generator=_checks.generator(generator)
        )
        noise = noise / math.sqrt(pixels)
        # Summed in at least float32, as gradient_penalty does: fp16 products can overflow the sum.
        total = (images * noise).sum(dtype=torch.promote_types(images.dtype, torch.float32))
        g = scaled_input_gradient(total, latents, scaler)
        if g is None:
            raise ValueError("images does not depend on latents (autograd found no path from latents to images)")
        vectors = math.prod(latents.shape[1:-1])  # k: 1 for [N, D], num_ws for [N, num_ws, D]

        compute = torch.promote_types(g.dtype, torch.float32)
        with torch.no_grad():
            lengths = (per_sample_penalty(g.detach(), 0.0).to(compute) / vectors).sqrt()
            batch_mean = _batch_mean(lengths, self.process_group).to(self.mean_length.dtype)
            updated = self.mean_length.lerp(batch_mean, self.decay)
            if scaler is not None and scaler.is_enabled():
                # An overflow of the scaled gradient is a step GradScaler skips, not a diverged G:
                # the running mean would keep its inf for good. Decided on the device (no sync).
                updated = torch.where(batch_mean.isfinite(), updated, self.mean_length)
            self.mean_length.copy_(updated)
        center = (self.mean_length * math.sqrt(vectors)).to(compute)
        # a = 0 before any batch had a nonzero gradient (or with decay 0): the centre-0 form there.
        # A NaN a (a diverged batch) takes the centred form, whose penalty is then NaN, as StyleGAN2's.
        nonzero = center != 0
        divisor = torch.where(nonzero, center, 1.0)
        centred = divisor.square() * per_sample_penalty(g / divisor.to(g.dtype), 1.0).to(compute)
        penalty = torch.where(nonzero, centred, per_sample_penalty(g, 0.0).to(compute))
        # Plus 0 * images (StyleGAN2's ``gen_img[:, 0, 0, 0] * 0 + loss_Gpl``), which changes no value
        # and no gradient: the penalty depends on the images' derivative only, so not on G's
        # parameters that shift the images by a constant (toRGB's bias). Under
        # DistributedDataParallel, a penalty backpropagated on its own (lazy regularisation) would
        # leave their gradients unreduced: DDP waits for a gradient of every parameter of the
        # forward, and the ranks' parameters silently diverge. This module cannot see whether G is
        # a DDP module, so it always adds the term (unreached parameters get a zero gradient rather
        # than None, as in StyleGAN2).
        zero = (images * 0).sum(dtype=latents.dtype)
        return (penalty / vectors).mean().to(latents.dtype) + zero

    def extra_repr(self):
        return f"decay={self.decay}"
